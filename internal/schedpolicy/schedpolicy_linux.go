//go:build linux

package schedpolicy

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Batch puts every thread of this process under SCHED_BATCH, keeping each
// thread's nice value; a thread starts under the policy of the thread that
// starts it, so the threads the Go runtime and cgo start later run under it
// too. It returns how many threads it moved. It leaves the process as it is
// and says so when a thread runs under a policy other than the default or
// batch (the operator chose one, such as SCHED_IDLE).
func Batch() (int, error) {
	attrs, err := readAttrs()
	if err != nil {
		return 0, err
	}
	for tid, a := range attrs {
		if a.Policy != unix.SCHED_NORMAL && a.Policy != unix.SCHED_BATCH {
			return 0, fmt.Errorf("thread %d runs under scheduling policy %d, neither the default nor batch: the process is left as it is", tid, a.Policy)
		}
		if a.Flags&unix.SCHED_FLAG_RESET_ON_FORK != 0 {
			// Its children would start under the default policy again,
			// and only a privileged process may clear the flag.
			return 0, fmt.Errorf("thread %d resets its scheduling policy in the threads it starts (SCHED_RESET_ON_FORK): the process is left as it is", tid)
		}
	}
	// A thread can be started by one not yet moved while the others are:
	// go over them again until a pass finds none under the default policy.
	moved := 0
	for pass := 0; ; pass++ {
		n := 0
		for tid, a := range attrs {
			if a.Policy != unix.SCHED_NORMAL {
				continue
			}
			a.Policy, a.Flags = unix.SCHED_BATCH, 0
			if err := unix.SchedSetAttr(tid, a, 0); errors.Is(err, unix.ESRCH) {
				continue // it ended
			} else if err != nil {
				return moved, fmt.Errorf("setting SCHED_BATCH on thread %d (%d threads already moved): %w", tid, moved, err)
			}
			n++
			moved++
		}
		if n == 0 {
			return moved, nil
		}
		if pass == 4 {
			return moved, errors.New("threads kept starting under the default policy after 5 passes")
		}
		if attrs, err = readAttrs(); err != nil {
			return moved, err
		}
	}
}

// readAttrs reads the scheduling attributes of every thread of this process.
func readAttrs() (map[int]*unix.SchedAttr, error) {
	tids, err := threads()
	if err != nil {
		return nil, err
	}
	out := make(map[int]*unix.SchedAttr, len(tids))
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // it ended
		}
		if err != nil {
			return nil, fmt.Errorf("reading the scheduling policy of thread %d: %w", tid, err)
		}
		out[tid] = a
	}
	return out, nil
}

// threads lists the ids of this process's threads. A thread listed may end
// before its policy is set (ESRCH, skipped). For its id to name a thread of
// another process by then, the kernel would have to hand out every other id
// (pid_max, 32768 or more) in the microseconds between.
func threads() ([]int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing this process's threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
