package sim

import (
	"errors"
	"fmt"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// trainerState is what a simulated trainer holds.
type trainerState struct {
	pos   train.Position
	value uint64
}

// workerProc plays one worker process around worker.Machine: its trainer,
// its ring endpoint, its session and the work the machine orders.
type workerProc struct {
	s     *sim
	id    string
	addr  string
	inc   uint64
	alive bool
	m     *worker.Machine

	st      trainerState
	grad    uint64 // the last all-reduced gradient
	snap    *trainerState
	ringGen uint64
	collSeq map[uint64]int // collectives joined per generation

	sess     *session // the session (nil: none)
	attached bool     // the session's Welcome was handled
	backoff  time.Duration

	busy      string // the work in flight ("" none), for serve
	token     int    // increments at each piece of work; cancels stale results
	cancelled bool   // the work in flight was cancelled

	frozenUntil time.Time
	slowUntil   time.Time

	stopping  bool
	stopPos   train.Position // where it stood when told to stop
	dismissed bool
	exitPos   train.Position
}

// connect opens a session after d.
func (w *workerProc) connect(d time.Duration) {
	s := w.s
	inc := w.inc
	s.at(d, "connect "+w.id, func() {
		if !w.alive || w.inc != inc || w.sess != nil {
			return
		}
		if !s.coord.up {
			w.retry()
			return
		}
		s.nextSID++
		ss := &session{s: s, id: s.nextSID, w: w, open: true}
		w.sess, w.attached = ss, false
		lastGen := w.ringGen
		s.at(s.dur(0, 5*time.Millisecond), fmt.Sprintf("hello %s on session %d", w.id, ss.id), func() {
			if ss.open && s.coord.up {
				s.coord.attach(ss, lastGen)
			} else if ss.open {
				ss.cut("no coordinator")
			}
		})
	})
}

func (w *workerProc) retry() {
	w.backoff = min(max(2*w.backoff, 100*time.Millisecond), 2*time.Second)
	w.connect(w.backoff)
}

// welcome is the coordinator's Welcome arriving.
func (w *workerProc) welcome(ss *session) {
	if w.sess != ss || w.attached {
		return
	}
	w.attached = true
	w.backoff = 0
	w.do(w.m.Attached(w.s.now, w.s.model.epochs))
}

// detached is the worker noticing that its session ended.
func (w *workerProc) detached(ss *session) {
	if !w.alive || w.sess != ss {
		return
	}
	w.sess, w.attached = nil, false
	w.do(w.m.Detached(w.s.now))
	if w.alive {
		w.retry()
	}
}

func (w *workerProc) tick() {
	if w.frozenUntil.After(w.s.now) {
		return
	}
	w.do(w.m.Tick(w.s.now))
}

// receive is a coordinator message arriving.
func (w *workerProc) receive(ss *session, msg *nicepb.CoordinatorMessage) {
	if !w.alive || w.sess != ss || !w.attached {
		return
	}
	w.do(w.m.Message(w.s.now, msg))
}

// later runs fn after d unless the process is gone, deferring it while the
// process is frozen.
func (w *workerProc) later(d time.Duration, desc string, fn func()) {
	inc := w.inc
	var run func()
	run = func() {
		if !w.alive || w.inc != inc {
			return
		}
		if w.frozenUntil.After(w.s.now) {
			w.s.at(w.frozenUntil.Sub(w.s.now)+time.Microsecond, desc+" (after a freeze)", run)
			return
		}
		fn()
	}
	w.s.at(d, desc, run)
}

// do carries out the machine's actions.
func (w *workerProc) do(a worker.Actions) {
	s := w.s
	for _, l := range a.Logs {
		s.log("%s: %s", w.id, l)
	}
	for _, msg := range a.Send {
		if l := msg.GetLeave(); l != nil && statexfer.FromPB(l.Position) == w.st.pos {
			// As the worker process does: the digest of the state it names.
			l.StateDigest = digest(w.st.pos, w.st.value)
		}
		if w.sess != nil && w.attached {
			w.sess.toCoordinator(msg)
		}
	}
	if a.Cancel {
		w.cancelled = true
		w.leaveCollectives()
	}
	switch {
	case a.Prepare != nil:
		o := *a.Prepare
		w.work("preparing", s.dur(time.Millisecond, 20*time.Millisecond), fmt.Sprintf("%s prepares generation %d", w.id, o.Generation), func() worker.Actions {
			var err error
			if o.Generation <= w.ringGen {
				err = fmt.Errorf("configuring ring generation %d after %d: stale generation", o.Generation, w.ringGen)
			} else {
				w.ringGen = o.Generation
				s.breakOlder(o.Generation)
			}
			return w.m.Prepared(s.now, o.Generation, w.st.pos, digest(w.st.pos, w.st.value), err)
		})
	case a.Fetch != nil:
		f := a.Fetch
		w.fetch(f, s.now.Add(2*time.Minute))
	case a.Compute != nil:
		w.compute(*a.Compute)
	case a.Apply != nil:
		o := *a.Apply
		w.work("applying", s.dur(time.Millisecond, 10*time.Millisecond), fmt.Sprintf("%s applies step %d", w.id, o.Commit.Step), func() worker.Actions {
			c := o.Commit
			w.st.value = s.model.apply(w.st.value, c.Step, w.grad, int(c.Batch), c.SumLl)
			w.st.pos = w.st.pos.Next(s.model.spe)
			var snapDigest uint64
			if c.Snapshot {
				snap := w.st
				w.snap = &snap
				snapDigest = digest(snap.pos, snap.value)
			}
			return w.m.Applied(s.now, o.Generation, w.st.pos, snapDigest, nil)
		})
	case a.Evaluate != nil:
		o := *a.Evaluate
		w.work("evaluating", s.dur(time.Millisecond, 30*time.Millisecond), fmt.Sprintf("%s evaluates epoch %d", w.id, o.Epoch), func() worker.Actions {
			lo, hi := train.Shard(s.model.evalN, o.Rank, o.Size)
			return w.m.Evaluated(s.now, o.Generation, o.Epoch, s.model.evalSum(w.st.value, lo, hi), lo, hi)
		})
	}
	if a.Exit {
		w.exit()
	}
}

// work runs one piece of work that ends after d with fn's machine call.
func (w *workerProc) work(kind string, d time.Duration, desc string, fn func() worker.Actions) {
	w.token++
	tok := w.token
	w.busy, w.cancelled = kind, false
	w.later(d, desc, func() {
		if w.token != tok {
			return
		}
		w.busy = ""
		w.do(fn())
	})
}

// fetch plays a state transfer, which waits while its source is busy.
func (w *workerProc) fetch(f *nicepb.Fetch, deadline time.Time) {
	s := w.s
	w.work("fetching", s.dur(5*time.Millisecond, 100*time.Millisecond), fmt.Sprintf("%s fetches step %d from %s", w.id, f.Position.Step, f.SourceAddr), func() worker.Actions {
		pos := statexfer.FromPB(f.Position)
		if w.cancelled {
			return w.m.Fetched(s.now, f.Generation, pos, 0, errors.New("cancelled"))
		}
		st, err, retry := s.serve(f.SourceAddr, pos, false)
		if retry && s.now.Before(deadline) {
			w.fetch(f, deadline)
			return worker.Actions{}
		}
		if err == nil && retry {
			err = errors.New("transfer timed out")
		}
		if err == nil && digest(st.pos, st.value) != f.StateDigest {
			err = fmt.Errorf("state from %s has digest %016x, the plan says %016x", f.SourceAddr, digest(st.pos, st.value), f.StateDigest)
		}
		if err != nil {
			return w.m.Fetched(s.now, f.Generation, pos, 0, err)
		}
		w.st = st
		return w.m.Fetched(s.now, f.Generation, st.pos, digest(st.pos, st.value), nil)
	})
}

// compute plays the gradient of the worker's shard, then the all-reduce.
func (w *workerProc) compute(o worker.ComputeOrder) {
	s := w.s
	w.work("computing-gradient", s.dur(time.Millisecond, 40*time.Millisecond), fmt.Sprintf("%s computes step %d (gen %d rank %d/%d)", w.id, o.Position.Step, o.Generation, o.Rank, o.Size), func() worker.Actions {
		r := worker.ComputeResult{Generation: o.Generation, Step: o.Position.Step}
		if w.cancelled {
			r.Err = errors.New("cancelled")
			return w.m.Computed(s.now, r)
		}
		if w.st.pos != o.Position {
			r.Err = fmt.Errorf("asked to compute step %d, the trainer is at step %d", o.Position.Step, w.st.pos.Step)
			return w.m.Computed(s.now, r)
		}
		lo, hi := train.BatchBounds(s.model.trainN, s.model.batch, o.Position.StepInEpoch)
		r.Lo, r.Hi = train.Shard(hi-lo, o.Rank, o.Size)
		g, ll := s.model.shard(w.st.value, o.Position, lo+r.Lo, lo+r.Hi)
		r.SumLL = ll
		if o.ParamsDigest {
			r.ParamsDigest = uint32(w.st.value) | 1
		}
		if o.Generation != w.ringGen {
			r.Err = fmt.Errorf("all-reduce of generation %d: the ring is configured for %d", o.Generation, w.ringGen)
			return w.m.Computed(s.now, r)
		}
		w.busy = "all-reduce"
		s.join(w, o, g, r)
		return worker.Actions{}
	})
}

// finishCompute is the all-reduce ending for this worker.
func (w *workerProc) finishCompute(tok int, r worker.ComputeResult, total uint64) {
	if w.token != tok || !w.alive {
		return
	}
	w.busy = ""
	if w.cancelled && r.Err == nil {
		r.Err = errors.New("cancelled")
	}
	if r.Err == nil {
		w.grad = total
		r.GradDigest = uint32(mix(total))
	}
	w.do(w.m.Computed(w.s.now, r))
}

// freeze stops the process for d (docker pause). A freeze longer than the
// keepalive timeout breaks its session.
func (w *workerProc) freeze(d time.Duration) {
	w.frozenUntil = w.s.now.Add(d)
	if ss := w.sess; ss != nil && d > 3*time.Second {
		w.s.at(3*time.Second, "keepalive declares "+w.id+" dead", func() { ss.cut("keepalive timeout") })
	}
}

// stop is SIGTERM: the machine asks to leave; a deadline ends the process
// if no dismissal comes.
func (w *workerProc) stop() {
	if w.stopping || !w.alive {
		return
	}
	w.stopping = true
	w.stopPos = w.st.pos
	inc := w.inc
	w.s.at(20*time.Second, w.id+": leave timeout", func() {
		if w.alive && w.inc == inc {
			w.s.log("%s: not dismissed within the leave timeout; exiting", w.id)
			w.exit()
		}
	})
	w.later(0, w.id+" told to stop", func() { w.do(w.m.Stop(w.s.now)) })
}

// exit ends the process after a Dismiss (or the leave deadline).
func (w *workerProc) exit() {
	if !w.alive {
		return
	}
	w.exitPos = w.st.pos
	if w.m.Dismissed() {
		w.dismissed = true
		if st := w.s.coord.store; w.s.coord.up && st.pos.Step < w.st.pos.Step && (st.ok || w.st.pos.Step > 0) {
			// The coordinator's restart would lose the steps this worker
			// trained; only a checkpoint at or past them allows dismissal.
			if !w.s.othersHold(w) {
				w.s.violate("%s dismissed at step %d, the newest stored checkpoint is at step %d and no other worker holds the state",
					w.id, w.st.pos.Step, st.pos.Step)
			}
		}
	}
	w.die("exited")
}

// die ends the process: its session breaks, its collectives fail.
func (w *workerProc) die(why string) {
	if !w.alive {
		return
	}
	w.alive = false
	w.token++
	w.leaveCollectives()
	if ss := w.sess; ss != nil {
		ss.cut(w.id + " " + why)
	}
	w.s.log("%s %s", w.id, why)
}
