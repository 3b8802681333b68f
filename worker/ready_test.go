package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/nice-flow/nice/train"
)

// Readiness through a worker's life: not ready until attached; ready while
// waiting for a plan, preparing, training and held; not ready once its
// ring broke (until the next plan), without a session, and once told to
// stop.
func TestMachineReadiness(t *testing.T) {
	check := func(m *Machine, when string, want bool, says string) {
		t.Helper()
		got, why := m.Readiness()
		if got != want || !strings.Contains(why, says) {
			t.Errorf("%s: ready %v (%q), want %v saying %q", when, got, why, want, says)
		}
	}
	m := NewMachine(MachineConfig{})
	check(m, "started, no session", false, "no session with the coordinator")
	m.Attached(t0, 3)
	check(m, "attached, no plan", true, "waiting to be planned into the next generation")
	m.Message(t0, plan(1, 1, "a", "b"))
	check(m, "planned", true, "preparing generation 1 as rank 1 of 2")
	if m.Rank() != 1 || m.RingSize() != 2 || !m.HasSession() {
		t.Errorf("rank %d of %d, session %v; want rank 1 of 2 with a session", m.Rank(), m.RingSize(), m.HasSession())
	}
	m.Prepared(t0, 1, train.Position{}, 7, nil)
	m.Message(t0, start(1, train.Position{}, 7))
	check(m, "started", true, "training in generation 1 as rank 1 of 2, at step 0")
	m.Computed(t0, ComputeResult{Generation: 1, Step: 0, GradDigest: 42, Lo: 4, Hi: 8})
	m.Message(t0, commit(1, 0, true))
	m.Applied(t0, 1, train.Position{Step: 1, StepInEpoch: 1}, 0, nil)
	check(m, "held by a commit", true, "held after step 1 in generation 1")

	m.Message(t0, plan(2, 0, "a", "b"))
	m.Prepared(t0, 2, train.Position{Step: 1, StepInEpoch: 1}, 9, nil)
	m.Message(t0, start(2, train.Position{Step: 1, StepInEpoch: 1}, 9))
	m.Computed(t0, ComputeResult{Generation: 2, Step: 1, Err: errors.New("neighbour gone")})
	check(m, "ring broken", false, "generation 2 failed on this worker")
	m.Message(t0, plan(3, 0, "a"))
	check(m, "the next plan", true, "preparing generation 3 as rank 0 of 1")

	m.Detached(t0)
	check(m, "session lost", false, "no session with the coordinator")
	if m.Rank() != -1 || m.RingSize() != 0 {
		t.Errorf("without a session: rank %d of %d, want -1 of 0", m.Rank(), m.RingSize())
	}
	m.Attached(t0, 3)
	check(m, "reattached", true, "waiting to be planned")
	m.Stop(t0)
	check(m, "told to stop", false, "told to stop")
}
