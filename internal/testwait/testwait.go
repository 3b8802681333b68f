// Package testwait is the one way tests here wait for a condition: they poll
// it on a ticker until it holds or a deadline passes, and on timeout say
// what they waited for and the last state they saw. The poll interval is no
// synchronisation (the condition is), so a slow or loaded machine makes a
// test slower, never wrong; the timeout only guards against a hang.
package testwait

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Interval is how often a condition is polled.
const Interval = 20 * time.Millisecond

// errNotYet is the last state of a bool condition that never held.
var errNotYet = errors.New("the condition did not hold")

// Poll calls try until it returns nil, at once and then every Interval,
// for at most timeout. It returns nil, or an error naming what was waited
// for, the timeout and try's last error (the last state seen). It does not
// need a test, so that it also serves in TestMain and in clean-ups.
func Poll(timeout time.Duration, what string, try func() error) error {
	err := try()
	if err == nil {
		return nil
	}
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-tick.C:
			if err = try(); err == nil {
				return nil
			}
		case <-deadline.C:
			// One last look: the condition may have come with the deadline.
			if err = try(); err == nil {
				return nil
			}
			return fmt.Errorf("waited %v for %s: %w", timeout, what, err)
		}
	}
}

// Until waits until cond holds, for at most timeout, and fails t (naming
// what) if it does not.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := Poll(timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatal(err)
	}
}

// For waits until cond holds for the value get returns, for at most
// timeout, and returns that value. On timeout it fails t with what and the
// last value seen (as indented JSON when it encodes, else as %+v).
func For[T any](t testing.TB, timeout time.Duration, what string, get func() T, cond func(T) bool) T {
	t.Helper()
	var v T
	err := Poll(timeout, what, func() error {
		v = get()
		if cond(v) {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("waited %v for %s; last seen: %s", timeout, what, Show(v))
	}
	return v
}

// Show formats v for a failure message: indented JSON when it encodes,
// else Go syntax with field names.
func Show(v any) string {
	if b, err := json.MarshalIndent(v, "", "  "); err == nil {
		return string(b)
	}
	return fmt.Sprintf("%+v", v)
}
