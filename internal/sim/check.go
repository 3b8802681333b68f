package sim

import (
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/train"
)

// check verifies the invariants after an event.
func (s *sim) check() {
	m := &s.model
	canonical := func(who string, st trainerState) {
		if st.pos.Step < 0 || st.pos.Step > m.total() {
			s.violate("%s holds step %d, outside the run's %d steps", who, st.pos.Step, m.total())
			return
		}
		if want := m.position(st.pos.Step); st.pos != want {
			s.violate("%s holds position %+v, step %d is %+v", who, st.pos, st.pos.Step, want)
			return
		}
		if st.value != m.canon[st.pos.Step] {
			s.violate("%s holds a state at step %d that the single process never had (a step applied twice, skipped, or computed from the wrong samples or state)", who, st.pos.Step)
		}
	}
	for _, id := range s.ids() {
		w := s.workers[id]
		if !w.alive {
			continue
		}
		canonical(id, w.st)
		if w.snap != nil {
			canonical(id+"'s snapshot", *w.snap)
		}
	}
	c := s.coord
	if c.store.ok {
		canonical("the stored checkpoint", trainerState{c.store.pos, c.store.value})
	}
	if !c.up {
		return
	}
	canonical("the coordinator's own state", trainerState{c.own.pos, c.own.value})
	v := c.m.View()
	for _, mv := range v.Members {
		if mv.State != coordinator.Training {
			continue
		}
		ss := c.sessions[mv.ID]
		if ss == nil || !ss.w.alive || !ss.open {
			continue // the coordinator has not noticed yet; a later event tells it
		}
		w := ss.w
		if mv.Rank < 0 || mv.Rank >= len(v.Ring) || v.Ring[mv.Rank] != mv.ID {
			s.violate("%s is training with rank %d in ring %v", mv.ID, mv.Rank, v.Ring)
		}
		if g := w.m.Generation(); g != v.Generation {
			s.violate("%s is shown training in generation %d but is in generation %d (state at step %d)", mv.ID, v.Generation, g, w.st.pos.Step)
		}
		if w.st.pos.Step != v.Next.Step && w.st.pos.Step != v.Next.Step-1 {
			s.violate("%s is shown training at step %d but holds step %d", mv.ID, v.Next.Step, w.st.pos.Step)
		}
	}
	s.checkFinished(v)
}

// checkFinished ends the run once it is over: training finished after the
// faults, every live worker attached and training with the final state, and
// the final state stored.
func (s *sim) checkFinished(v coordinator.View) {
	if v.Phase != coordinator.Finished || s.now.Before(epoch0.Add(s.o.FaultWindow+30*time.Second)) {
		return
	}
	final := s.model.total()
	if !s.coord.store.ok || s.coord.store.pos.Step != final || len(s.scored) != s.model.epochs {
		return
	}
	training := 0
	for _, mv := range v.Members {
		if mv.State == coordinator.Training {
			training++
		}
	}
	for _, id := range s.ids() {
		w := s.workers[id]
		if !w.alive {
			continue
		}
		if w.st.pos.Step != final || w.busy != "" {
			return
		}
	}
	if training == 0 {
		return
	}
	s.finished = true
}

// position is where step lands in the epochs.
func (m *model) position(step int64) train.Position {
	return train.Position{Step: step, Epoch: int(step) / m.spe, StepInEpoch: int(step) % m.spe}
}
