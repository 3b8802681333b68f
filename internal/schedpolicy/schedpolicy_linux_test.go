//go:build linux

package schedpolicy

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lockedThreads starts n goroutines, each locked to a thread of its own, so
// that the runtime has to start threads for everything else: begin runs on
// each locked thread, and end (if set) on it again once the returned func
// lets them go, before the thread returns to the runtime.
func lockedThreads(t *testing.T, n int, begin, end func(tid int)) (stop func()) {
	t.Helper()
	var wg sync.WaitGroup
	release := make(chan struct{})
	started := make(chan struct{}, n)
	for range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tid := unix.Gettid()
			begin(tid)
			started <- struct{}{}
			<-release
			if end != nil {
				end(tid)
			}
		})
	}
	for range n {
		<-started
	}
	return func() { close(release); wg.Wait() }
}

func mustThreads(t *testing.T) []int {
	t.Helper()
	tids, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	return tids
}

func policies(t *testing.T) map[int]uint32 {
	t.Helper()
	out := map[int]uint32{}
	for _, tid := range mustThreads(t) {
		if p, err := policyOf(tid); err == nil {
			out[tid] = p
		}
	}
	return out
}

// Batch moves every thread, and the threads started after it inherit the
// policy.
func TestBatchMovesEveryThreadAndTheOnesStartedLater(t *testing.T) {
	if _, err := Batch(); err != nil {
		t.Fatal(err)
	}
	before := policies(t)
	for tid, p := range before {
		if p != unix.SCHED_BATCH {
			t.Fatalf("thread %d has policy %d after Batch, want SCHED_BATCH (%d)", tid, p, unix.SCHED_BATCH)
		}
	}
	var mu sync.Mutex
	seen := map[int]uint32{}
	stop := lockedThreads(t, len(before)+4, func(tid int) {
		p, err := policyOf(tid)
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		seen[tid] = p
		mu.Unlock()
	}, nil)
	defer stop()
	fresh := 0
	for tid, p := range seen {
		if _, old := before[tid]; !old {
			fresh++
		}
		if p != unix.SCHED_BATCH {
			t.Errorf("thread %d has policy %d, want SCHED_BATCH (%d)", tid, p, unix.SCHED_BATCH)
		}
	}
	if fresh == 0 {
		t.Fatalf("no thread was started after Batch (%d threads before): nothing shows the policy is inherited", len(before))
	}
	t.Logf("%d threads before, %d started after, all under SCHED_BATCH", len(before), fresh)
}

// A process an operator put under another policy (here one thread under
// SCHED_IDLE), or whose threads reset the policy of the threads they start,
// is left as it is, and the error says why.
func TestBatchLeavesAnotherPolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy uint32
		flags  uint64
	}{
		{"SCHED_IDLE", unix.SCHED_IDLE, 0},
		{"SCHED_RESET_ON_FORK", unix.SCHED_NORMAL, unix.SCHED_FLAG_RESET_ON_FORK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := func(tid int, policy uint32, flags uint64) {
				a, err := unix.SchedGetAttr(tid, 0)
				if err == nil {
					a.Policy, a.Flags = policy, flags
					err = unix.SchedSetAttr(tid, a, 0)
				}
				if err != nil {
					t.Errorf("setting policy %d, flags %x on thread %d: %v", policy, flags, tid, err)
				}
			}
			var odd int
			stop := lockedThreads(t, 1, func(tid int) {
				set(tid, tc.policy, tc.flags)
				odd = tid
			}, func(tid int) {
				set(tid, unix.SCHED_NORMAL, 0) // as the runtime handed it out
			})
			defer stop()
			before := policies(t)
			moved, err := Batch()
			if err == nil || moved != 0 || !strings.Contains(err.Error(), "left as it is") {
				t.Fatalf("Batch with a thread under %s: moved %d, error %v; want none moved and an error saying so", tc.name, moved, err)
			}
			if a, err := unix.SchedGetAttr(odd, 0); err != nil || a.Policy != tc.policy || a.Flags&unix.SCHED_FLAG_RESET_ON_FORK != tc.flags {
				t.Errorf("the %s thread now has %+v (%v)", tc.name, a, err)
			}
			for tid, p := range policies(t) {
				if was, ok := before[tid]; ok && p != was {
					t.Errorf("thread %d went from policy %d to %d", tid, was, p)
				}
			}
		})
	}
}

// policyOf returns the scheduling policy of thread tid.
func policyOf(tid int) (uint32, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, err
	}
	return a.Policy, nil
}
