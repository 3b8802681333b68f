// Package schedpolicy puts a process's threads under the kernel's batch
// scheduling policy (SCHED_BATCH).
//
// A worker is a throughput job: its threads compute, send and receive
// without pause, and nothing waits on it interactively. Under the default
// policy the kernel lets a thread that wakes (a ring receiver whose bytes
// arrived, a goroutine's thread handed a P) preempt the one running, and on
// a full machine that means many more context switches, each of which
// costs the hypervisor an exit on the virtual machines we measured on.
// SCHED_BATCH keeps the fair share of the CPU but gives up that wake-up
// preemption. `up` on 2 cores, fresh runs alternating, workers under the
// default policy against SCHED_BATCH: 909, 811, 851 against 977, 885, 913
// samples/s with 2 workers, 505, 493, 533 against 532, 543, 533 with 4
// (README, "Batch scheduling").
//
// Linux only; the policy needs no privilege (it cannot raise a share).
package schedpolicy
