package sim

import (
	"fmt"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

const coordAddr = "coordinator:7000"

// coordProc plays the coordinator's server around coordinator.Machine: its
// sessions, its snapshot taking (one at a time, the newest request waiting),
// its checkpoint store and its restarts.
type coordProc struct {
	s        *sim
	inc      int
	up       bool
	m        *coordinator.Machine
	sessions map[string]*session

	own      stored // the newest state it holds in memory (served to workers)
	store    stored // the newest checkpoint on disk; survives restarts
	diskFull bool

	snapping, nextSnap *coordinator.SnapshotRequest
	lastGen            uint64
	scores             map[int]bool // epochs this process knows the score of
}

// start (re)starts the coordinator from its newest stored checkpoint.
func (c *coordProc) start() {
	if c.up {
		return
	}
	c.inc++
	c.up = true
	c.sessions = map[string]*session{}
	c.snapping, c.nextSnap = nil, nil
	from := c.store
	if !from.ok {
		from = stored{value: c.s.model.canon[0], ok: true}
	}
	c.own = from
	c.m = coordinator.NewMachine(c.s.mcfg, from.pos, digest(from.pos, from.value), coordAddr)
	c.scores = map[int]bool{}
	for e := range from.scored {
		c.scores[e] = true
	}
	if from.pos.StepInEpoch == 0 && from.pos.Epoch > 0 && !c.scores[from.pos.Epoch] {
		c.m.NeedScore(from.pos.Epoch)
	}
	c.lastGen = 0
	c.s.log("coordinator %d up at step %d", c.inc, from.pos.Step)
}

// die kills the coordinator: every session breaks.
func (c *coordProc) die() {
	if !c.up {
		return
	}
	c.up = false
	for _, id := range c.s.ids() {
		if ss := c.sessions[id]; ss != nil {
			ss.cut("coordinator died")
		}
	}
	c.sessions = nil
	c.s.log("coordinator %d down", c.inc)
}

func (c *coordProc) tick() {
	if c.up {
		c.apply(c.m.Tick(c.s.now))
	}
}

// attach is a Hello arriving on session ss.
func (c *coordProc) attach(ss *session, lastGen uint64) {
	out, err := c.m.Attach(c.s.now, ss.w.id, ss.w.addr, ss.w.inc, lastGen)
	if err != nil {
		c.apply(out)
		ss.cut("refused: " + err.Error())
		return
	}
	if old := c.sessions[ss.w.id]; old != nil && old != ss {
		old.cut("replaced by a new session")
	}
	c.sessions[ss.w.id] = ss
	ss.coordInc = c.inc
	c.apply(out)
	ss.toWorker(nil) // the Welcome
}

// detach is the coordinator noticing that session ss ended.
func (c *coordProc) detach(ss *session, why string) {
	if !c.up || c.sessions[ss.w.id] != ss {
		return
	}
	delete(c.sessions, ss.w.id)
	c.apply(c.m.Detach(c.s.now, ss.w.id, ss.w.inc, why))
}

// receive is a worker message arriving on session ss.
func (c *coordProc) receive(ss *session, msg *nicepb.WorkerMessage) {
	if !c.up || c.sessions[ss.w.id] != ss {
		return
	}
	now, id := c.s.now, ss.w.id
	var out coordinator.Output
	switch k := msg.Kind.(type) {
	case *nicepb.WorkerMessage_Ready:
		out = c.m.Ready(now, id, k.Ready)
	case *nicepb.WorkerMessage_Report:
		out = c.m.Report(now, id, k.Report)
	case *nicepb.WorkerMessage_Eval:
		out = c.m.Eval(now, id, k.Eval)
	case *nicepb.WorkerMessage_RingFailure:
		out = c.m.RingFailure(now, id, k.RingFailure)
	case *nicepb.WorkerMessage_Leave:
		out = c.m.Leave(now, id, k.Leave.Reason, statexfer.FromPB(k.Leave.Position), k.Leave.StateDigest)
	case *nicepb.WorkerMessage_Snapshotted:
		out = c.m.Snapshotted(now, id, k.Snapshotted)
	}
	c.apply(out)
}

// apply checks an output and carries it out.
func (c *coordProc) apply(out coordinator.Output) {
	s := c.s
	for _, l := range out.Logs {
		s.log("coordinator: %s", l)
	}
	v := c.m.View()
	if v.Generation < c.lastGen {
		s.violate("the coordinator's generation went back from %d to %d", c.lastGen, v.Generation)
	}
	c.lastGen = v.Generation
	for _, snd := range out.Sends {
		if ss := c.sessions[snd.To]; ss != nil {
			ss.toWorker(snd.Msg)
		}
	}
	for _, id := range out.Disconnect {
		if ss := c.sessions[id]; ss != nil {
			ss.cut("disconnected by the coordinator")
			delete(c.sessions, id)
		}
	}
	if cm := out.Committed; cm != nil {
		s.checkCommit(cm)
	}
	if sc := out.Scored; sc != nil {
		want := s.model.scores[sc.Epoch]
		if sc.Epoch < 1 || int(sc.Epoch) > s.model.epochs || sc.TestLl != want {
			s.violate("epoch %d scored %v, the single process scores %v", sc.Epoch, sc.TestLl, want)
		}
		s.scored[int(sc.Epoch)] = sc.TestLl
		c.scores[int(sc.Epoch)] = true
	}
	if r := out.Snapshot; r != nil {
		c.snapshot(r)
	}
}

// snapshot plays Server.startSnapshot: one at a time; a newer request waits
// for the running one, replacing an older waiting one.
func (c *coordProc) snapshot(r *coordinator.SnapshotRequest) {
	if c.snapping != nil {
		if c.snapping.Position != r.Position && (c.nextSnap == nil || c.nextSnap.Position.Step <= r.Position.Step) {
			c.nextSnap = r
		}
		return
	}
	c.snapping = r
	c.take(r, c.s.now.Add(30*time.Second))
}

// take fetches the state r names, waiting (as a worker's FetchState does)
// up to deadline for the snapshot to be taken.
func (c *coordProc) take(r *coordinator.SnapshotRequest, deadline time.Time) {
	inc := c.inc
	s := c.s
	s.at(s.dur(time.Millisecond, 40*time.Millisecond), fmt.Sprintf("checkpoint fetch of step %d from %s", r.Position.Step, r.Addr), func() {
		if !c.up || c.inc != inc {
			return
		}
		st, err, retry := s.serve(r.Addr, r.Position, !r.Live)
		if retry && s.now.Before(deadline) {
			c.take(r, deadline)
			return
		}
		if retry {
			err = fmt.Errorf("no state at step %d from %s within 30s", r.Position.Step, r.Addr)
		}
		if err != nil {
			s.log("coordinator: checkpoint at step %d not taken: %v", r.Position.Step, err)
			c.snapDone()
			return
		}
		c.awaitAgreement(inc, st, deadline, func() { c.keep(inc, st) })
	})
}

// awaitAgreement plays Server.awaitAgreement: then runs once the replicas
// agreed on st; a state they agreed otherwise on, or not in time, is not
// stored.
func (c *coordProc) awaitAgreement(inc int, st trainerState, deadline time.Time, then func()) {
	s := c.s
	if !c.up || c.inc != inc {
		return
	}
	d := digest(st.pos, st.value)
	agreed := c.m.View().Agreed
	for _, a := range agreed {
		if a.Position != st.pos {
			continue
		}
		if a.Digest != d {
			s.violate("coordinator: the checkpoint at step %d has digest %016x, the replicas agreed on %016x", st.pos.Step, d, a.Digest)
			c.snapDone()
			return
		}
		then()
		return
	}
	if (len(agreed) > 0 && agreed[0].Position.Step > st.pos.Step) || !s.now.Before(deadline) {
		s.log("coordinator: checkpoint at step %d refused: no agreement of the replicas on it", st.pos.Step)
		c.snapDone()
		return
	}
	s.at(s.dur(time.Millisecond, 20*time.Millisecond), fmt.Sprintf("checkpoint of step %d waits for the replicas' digests", st.pos.Step), func() {
		if c.up && c.inc == inc {
			c.awaitAgreement(inc, st, deadline, then)
		}
	})
}

// keep writes a fetched, agreed state as the checkpoint.
func (c *coordProc) keep(inc int, st trainerState) {
	s := c.s
	scored := map[int]bool{}
	for e := range c.scores {
		if e <= st.pos.Epoch {
			scored[e] = true
		}
	}
	took := stored{pos: st.pos, value: st.value, ok: true, scored: scored}
	if st.pos.Step >= c.own.pos.Step {
		c.own = took
	}
	c.m.SetOwnState(st.pos, digest(st.pos, st.value))
	full := c.diskFull
	s.at(s.dur(time.Millisecond, 60*time.Millisecond), fmt.Sprintf("checkpoint write of step %d", st.pos.Step), func() {
		if !c.up || c.inc != inc {
			return // lost with the process
		}
		if full || c.diskFull {
			s.log("coordinator: checkpoint write of step %d failed: disk full", st.pos.Step)
		} else {
			if st.pos.Step >= c.store.pos.Step || !c.store.ok {
				c.store = took
			}
			c.apply(c.m.Stored(s.now, st.pos))
		}
		c.snapDone()
	})
}

func (c *coordProc) snapDone() {
	c.snapping, c.nextSnap = c.nextSnap, nil
	if c.snapping != nil {
		c.take(c.snapping, c.s.now.Add(30*time.Second))
	}
}

// serve is FetchState at addr: the coordinator's own state, a worker's
// live state, or a worker's snapshot (retry: not taken yet, wait).
func (s *sim) serve(addr string, pos train.Position, snapshot bool) (st trainerState, err error, retry bool) {
	if addr == coordAddr {
		c := s.coord
		if !c.up || c.own.pos != pos || snapshot {
			return st, fmt.Errorf("the coordinator holds step %d", c.own.pos.Step), false
		}
		return trainerState{pos: c.own.pos, value: c.own.value}, nil, false
	}
	for _, w := range s.workers {
		if w.addr != addr || !w.alive {
			continue
		}
		if w.frozenUntil.After(s.now) {
			return st, nil, true // the transfer stalls while the process is frozen
		}
		if snapshot {
			switch {
			case w.snap != nil && w.snap.pos == pos:
				return *w.snap, nil, false
			case w.st.pos.Step > pos.Step:
				return st, fmt.Errorf("%s: the snapshot is past step %d", addr, pos.Step), false
			}
			return st, nil, true
		}
		if w.busy == "applying" || w.busy == "computing-gradient" {
			return st, nil, true // the trainer's lock is held
		}
		if w.st.pos != pos {
			return st, fmt.Errorf("%s: live state is at step %d, not %d", addr, w.st.pos.Step, pos.Step), false
		}
		return w.st, nil, false
	}
	return st, fmt.Errorf("%s: no such process", addr), false
}

// checkCommit checks a committed step: its shards partition its batch.
func (s *sim) checkCommit(cm *coordinator.Commit) {
	lo, hi := train.BatchBounds(s.model.trainN, s.model.batch, cm.Position.StepInEpoch)
	if cm.Batch != hi-lo {
		s.violate("step %d committed with batch %d, want %d", cm.Position.Step, cm.Batch, hi-lo)
	}
	at := 0
	for r, sh := range cm.Shards {
		slo, shi := train.Shard(hi-lo, r, len(cm.Shards))
		if sh.Lo != at || sh.Lo != slo || sh.Hi != shi {
			s.violate("step %d: shards %v do not partition the batch of %d", cm.Position.Step, cm.Shards, hi-lo)
			return
		}
		at = sh.Hi
	}
	if at != hi-lo {
		s.violate("step %d: shards %v cover %d of %d", cm.Position.Step, cm.Shards, at, hi-lo)
	}
	_, ll := s.model.shard(s.model.canon[cm.Position.Step], cm.Position, lo, hi)
	if cm.SumLL != ll {
		s.violate("step %d committed with sum_ll %v, the single process has %v", cm.Position.Step, cm.SumLL, ll)
	}
	s.commits = append(s.commits, cm)
}
