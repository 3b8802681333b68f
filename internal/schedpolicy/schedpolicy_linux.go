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
	tids, err := threads()
	if err != nil {
		return 0, err
	}
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // it ended
		}
		if err != nil {
			return 0, fmt.Errorf("reading the scheduling policy of thread %d: %w", tid, err)
		}
		if a.Policy != unix.SCHED_NORMAL && a.Policy != unix.SCHED_BATCH {
			return 0, fmt.Errorf("thread %d runs under scheduling policy %d, neither the default nor batch: the process is left as it is", tid, a.Policy)
		}
		if a.Flags&unix.SCHED_FLAG_RESET_ON_FORK != 0 {
			// Its children would start under the default policy again,
			// and only a privileged process may clear the flag.
			return 0, fmt.Errorf("thread %d resets its scheduling policy in the threads it starts (SCHED_RESET_ON_FORK): the process is left as it is", tid)
		}
	}
	moved := 0
	// A thread can be started by one not yet moved while the others are:
	// go over them again until a pass moves none.
	for range 5 {
		n, err := moveAll()
		moved += n
		if err != nil || n == 0 {
			return moved, err
		}
	}
	return moved, nil
}

// moveAll puts every thread now under the default policy under batch, and
// returns how many it moved.
func moveAll() (int, error) {
	tids, err := threads()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("reading the scheduling policy of thread %d: %w", tid, err)
		}
		if a.Policy != unix.SCHED_NORMAL {
			continue
		}
		a.Policy = unix.SCHED_BATCH
		a.Flags = 0
		if err := unix.SchedSetAttr(tid, a, 0); errors.Is(err, unix.ESRCH) {
			continue
		} else if err != nil {
			return n, fmt.Errorf("setting SCHED_BATCH on thread %d (%d threads already moved): %w", tid, n, err)
		}
		n++
	}
	return n, nil
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

// Policy returns the scheduling policy of thread tid (0: the calling
// thread), unix.SCHED_NORMAL or unix.SCHED_BATCH among others.
func Policy(tid int) (uint32, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, err
	}
	return a.Policy, nil
}
