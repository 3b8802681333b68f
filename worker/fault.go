package worker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nice-flow/nice/ring"
)

// Fault pauses the worker at one point of one step, so that fault-injection
// tests (and people checking recovery by hand) can kill it exactly there:
// "gradient" (computing its shard's gradient), "ring" (inside the
// all-reduce, after the first frames), "report" (after the all-reduce,
// before its report reaches the coordinator, so the step is not committed),
// "apply" (the step's commit has arrived, its update is not applied yet) or
// "eval" (scoring its shard of the scored set at an epoch's end; Step is
// then the first step of the next epoch).
type Fault struct {
	Phase string
	Step  int64
	Pause time.Duration
}

// ParseFault reads "phase@step:pause", e.g. "ring@5:500ms".
func ParseFault(s string) (Fault, error) {
	phase, rest, ok1 := strings.Cut(s, "@")
	step, pause, ok2 := strings.Cut(rest, ":")
	f := Fault{Phase: phase}
	var err1, err2 error
	f.Step, err1 = strconv.ParseInt(step, 10, 64)
	f.Pause, err2 = time.ParseDuration(pause)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || f.Step < 0 || f.Pause <= 0 {
		return Fault{}, fmt.Errorf("fault %q: want phase@step:pause, e.g. ring@5:500ms", s)
	}
	switch phase {
	case "gradient", "ring", "report", "apply", "eval":
		return f, nil
	}
	return Fault{}, fmt.Errorf("fault %q: phase must be gradient, ring, report, apply or eval", s)
}

// faultAt pauses if the fault is set for this phase and step.
func (w *Worker) faultAt(ctx context.Context, phase string, step int64) {
	f := w.cfg.Fault
	if f.Phase != phase || f.Step != step {
		return
	}
	w.log.Warn("fault injection: pausing", "phase", phase, "step", step, "pause", f.Pause)
	select {
	case <-ctx.Done():
	case <-time.After(f.Pause):
	}
}

// ringFault pauses the sender once, at the first all-gather frame of the
// armed all-reduce: by then every member is inside the collective.
func (w *Worker) ringFault(armed *atomic.Bool) ring.FrameFault {
	return func(id ring.StreamID, h *ring.FrameHeader, data []float32) (ring.FaultAction, []float32) {
		if h.Step >= uint32(id.RingSize-1) && armed.CompareAndSwap(true, false) {
			w.faultAt(context.Background(), "ring", w.cfg.Fault.Step)
		}
		return ring.Deliver, data
	}
}
