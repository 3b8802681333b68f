package testwait

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A condition that holds after some polls ends the wait with nil; one that
// never holds ends it after the timeout with what and the last error.
func TestPoll(t *testing.T) {
	var calls atomic.Int64
	if err := Poll(time.Minute, "the third call", func() error {
		if calls.Add(1) < 3 {
			return fmt.Errorf("call %d", calls.Load())
		}
		return nil
	}); err != nil {
		t.Fatalf("Poll: %v", err)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("the condition was asked %d times, want 3", n)
	}

	calls.Store(0)
	last := errors.New("still 7 goroutines")
	err := Poll(50*time.Millisecond, "goroutines to end", func() error { calls.Add(1); return last })
	if !errors.Is(err, last) || !strings.Contains(err.Error(), "goroutines to end") || !strings.Contains(err.Error(), "50ms") {
		t.Fatalf("Poll gave %v; want an error wrapping the last one, naming what and the timeout", err)
	}
	if calls.Load() < 2 {
		t.Fatalf("the condition was asked %d times in all, want a first look and a last one at least", calls.Load())
	}
}

// fakeT records a failure instead of ending the test.
type fakeT struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func (f *fakeT) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
}

func TestUntilAndFor(t *testing.T) {
	type state struct {
		Phase string `json:"phase"`
		Step  int    `json:"step"`
	}
	n := 0
	got := For(t, time.Minute, "step 3", func() state { n++; return state{"running", n} }, func(s state) bool { return s.Step == 3 })
	if got.Step != 3 {
		t.Fatalf("For returned %+v, want the value that met the condition", got)
	}
	Until(t, time.Minute, "n to reach 5", func() bool { n++; return n >= 5 })

	ft := &fakeT{}
	For(ft, 30*time.Millisecond, "a hold", func() state { return state{"running", 7} }, func(s state) bool { return s.Phase == "holding" })
	if !strings.Contains(ft.failed, "a hold") || !strings.Contains(ft.failed, `"phase": "running"`) || !strings.Contains(ft.failed, `"step": 7`) {
		t.Fatalf("For failed with %q; want what it waited for and the last state as JSON", ft.failed)
	}
	ft = &fakeT{}
	Until(ft, 30*time.Millisecond, "the moon", func() bool { return false })
	if !strings.Contains(ft.failed, "the moon") {
		t.Fatalf("Until failed with %q; want what it waited for", ft.failed)
	}
}

func TestShow(t *testing.T) {
	if got := Show(struct{ A int }{3}); !strings.Contains(got, `"A": 3`) {
		t.Errorf("Show of a struct: %q", got)
	}
	if got := Show(func() {}); got == "" || strings.Contains(got, "json") {
		t.Errorf("Show of what JSON cannot encode: %q", got)
	}
}
