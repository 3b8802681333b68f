package worker

import "fmt"

// Readiness says whether the worker is ready and why, in a sentence.
//
// A worker is ready while it has a session with the coordinator and is
// either in the current generation (setting up its ring, fetching the
// generation's state, training, or held at a commit until the next plan) or
// attached and waiting to be planned into the next generation, as a worker
// that just joined is. It is not ready without a session, once told to stop,
// or when its generation's ring broke or it does not hold the generation's
// state (until the coordinator plans the next generation). Not ready means
// "do not count on it now", never "restart it": it keeps its state and comes
// back by itself.
func (m *Machine) Readiness() (bool, string) {
	switch {
	case m.dismissed:
		return false, "dismissed by the coordinator: its state is checkpointed and it stops"
	case m.leaving:
		return false, "told to stop: waiting for the coordinator to checkpoint its state and let it go"
	case !m.attached:
		return false, "no session with the coordinator (it keeps its state and reattaches by itself)"
	case m.plan == nil:
		return true, "attached, waiting to be planned into the next generation"
	case m.broken:
		return false, fmt.Sprintf("generation %d failed on this worker (ring broken or state not the generation's); waiting for the next generation", m.plan.Generation)
	}
	rank := fmt.Sprintf("rank %d of %d", m.plan.Rank, len(m.plan.Ring))
	switch {
	case m.held:
		return true, fmt.Sprintf("held after step %d in generation %d (%s) until the next generation", m.pos.Step, m.plan.Generation, rank)
	case m.started:
		return true, fmt.Sprintf("training in generation %d as %s, at step %d", m.plan.Generation, rank, m.pos.Step)
	}
	return true, fmt.Sprintf("preparing generation %d as %s", m.plan.Generation, rank)
}

// HasSession reports whether the machine has a session with the coordinator.
func (m *Machine) HasSession() bool { return m.attached }

// Rank is this worker's rank in the current generation's ring (-1: none).
func (m *Machine) Rank() int {
	if m.plan == nil {
		return -1
	}
	return int(m.plan.Rank)
}

// RingSize is the number of members of the current generation's ring (0:
// none).
func (m *Machine) RingSize() int {
	if m.plan == nil {
		return 0
	}
	return len(m.plan.Ring)
}
