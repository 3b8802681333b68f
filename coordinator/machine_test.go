package coordinator

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// The tests in this file drive Machine with a simulated cluster: fake workers
// that answer Plan, Fetch, Start and Commit the way worker.Worker does, a
// clock the test advances, and invariant checks run on every Output the
// machine returns. Nothing touches a network.

const (
	simCoordAddr   = "coordinator:7000"
	simStartDigest = 0x5eed // the initial state's digest, on workers and coordinator
)

// simConfig is a run of 3 short epochs: 50 samples in batches of 8 make 7
// steps, the last one of 2 samples.
func simConfig() MachineConfig {
	return MachineConfig{
		MinWorkers:     1,
		Settle:         time.Second,
		PrepareTimeout: 10 * time.Second,
		StepTimeout:    5 * time.Second,
		RingGrace:      2 * time.Second,
		TrainN:         50,
		EvalN:          20,
		Batch:          8,
		Epochs:         3,
		DigestEvery:    1,
	}
}

// simState is a training state as far as the machine can tell: a position
// and a digest.
type simState struct {
	pos    train.Position
	digest uint64
}

// The fake mathematics. A committed step changes the digest as a function of
// the old digest and the step's global batch only, so every replica, however
// many ranks computed the step, ends at the same digest, and a run with
// failures ends where an undisturbed run ends.

func mixDigest(d uint64, step int64, batch int, sumLL float64) uint64 {
	d ^= uint64(step) + 0x9e3779b97f4a7c15 + d<<6 + d>>2
	d *= 0xff51afd7ed558ccd
	d ^= uint64(batch)<<32 ^ math.Float64bits(sumLL)
	d *= 0xc4ceb9fe1a85ec53
	return d | 1
}

// sampleLL is the log-likelihood of permutation position p of epoch e.
func sampleLL(epoch, p int) float64 { return -float64(p%5 + 1 + epoch) }

func batchLL(epoch, lo, hi int) float64 {
	var s float64
	for p := lo; p < hi; p++ {
		s += sampleLL(epoch, p)
	}
	return s
}

// evalLL is the score of a state at step: it depends on the step so that
// scoring the wrong state shows.
func evalLL(step int64, lo, hi int) float64 {
	var s float64
	for i := lo; i < hi; i++ {
		s += -float64(i+1) - 1000*float64(step)
	}
	return s
}

// referenceState is where an undisturbed run stands after steps steps.
func referenceState(cfg MachineConfig, steps int64) simState {
	spe := train.StepsPerEpoch(cfg.TrainN, cfg.Batch)
	st := simState{digest: simStartDigest}
	for st.pos.Step < steps {
		lo, hi := train.BatchBounds(cfg.TrainN, cfg.Batch, st.pos.StepInEpoch)
		st.digest = mixDigest(st.digest, st.pos.Step, hi-lo, batchLL(st.pos.Epoch, lo, hi))
		st.pos = st.pos.Next(spe)
	}
	return st
}

// simWorker behaves as worker.Worker does towards the coordinator.
type simWorker struct {
	id, addr    string
	incarnation uint64
	state       simState
	snap        *simState // taken when a commit asks for one

	gen        uint64 // of the last Plan
	rank, size int
	training   bool // started in gen and not held or broken
	ringBroken bool // the all-reduce of its next step fails

	paused bool // its messages wait in outbox (a slow worker)
	inbox  []*nicepb.CoordinatorMessage
	outbox []*nicepb.WorkerMessage
	got    []*nicepb.CoordinatorMessage

	// faults of its next report
	badGrad, badParams bool
	shard              func(lo, hi int) (int, int)

	numerics uint32 // its build's, said in every report
}

func (w *simWorker) send(m *nicepb.WorkerMessage) { w.outbox = append(w.outbox, m) }

func (w *simWorker) ready() {
	w.send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Ready{Ready: &nicepb.Ready{
		Generation: w.gen, HasState: true, Position: statexfer.ToPB(w.state.pos), StateDigest: w.state.digest,
	}}})
}

// received returns the messages of one kind the worker was sent.
func received[T comparable](w *simWorker, get func(*nicepb.CoordinatorMessage) T) []T {
	var out []T
	var zero T
	for _, m := range w.got {
		if v := get(m); v != zero {
			out = append(out, v)
		}
	}
	return out
}

func plans(w *simWorker) []*nicepb.Plan {
	return received(w, (*nicepb.CoordinatorMessage).GetPlan)
}
func fetches(w *simWorker) []*nicepb.Fetch {
	return received(w, (*nicepb.CoordinatorMessage).GetFetch)
}
func starts(w *simWorker) []*nicepb.Start {
	return received(w, (*nicepb.CoordinatorMessage).GetStart)
}

// pendingSnapshot is a snapshot asked of the worker process w.
type pendingSnapshot struct {
	SnapshotRequest
	w     *simWorker
	taken *simState // fetched; stored once the replicas agree on it
}

// simCluster is a machine, its workers and the record of what happened.
type simCluster struct {
	t   testing.TB
	cfg MachineConfig
	spe int
	m   *Machine
	now time.Time

	workers map[string]*simWorker // attached
	nextInc uint64
	own     simState          // the coordinator's newest checkpoint
	pending []pendingSnapshot // snapshots asked for, not yet taken

	outs    []Output
	ledger  []*Commit
	used    map[int]map[int]int // epoch -> permutation position -> uses
	scores  []*nicepb.EpochScore
	expect  train.Position // the next step the ledger expects
	lastGen uint64
	rewinds int
	logs    []string
}

// newSimCluster starts a machine at step 0 and attaches fresh workers.
func newSimCluster(t testing.TB, cfg MachineConfig, ids ...string) *simCluster {
	t.Helper()
	c := &simCluster{
		t:       t,
		cfg:     cfg,
		spe:     train.StepsPerEpoch(cfg.TrainN, cfg.Batch),
		m:       NewMachine(cfg, train.Position{}, simStartDigest, simCoordAddr),
		now:     time.Unix(1_700_000_000, 0),
		workers: map[string]*simWorker{},
		own:     simState{digest: simStartDigest},
		used:    map[int]map[int]int{},
	}
	for _, id := range ids {
		c.attach(id)
	}
	return c
}

// fail reports a broken invariant with the machine's recent logs.
func (c *simCluster) fail(format string, args ...any) {
	c.t.Helper()
	tail := c.logs[max(0, len(c.logs)-15):]
	c.t.Errorf("%s\nrecent machine logs:\n\t%s", fmt.Sprintf(format, args...), strings.Join(tail, "\n\t"))
}

// attach starts a fresh worker process (state at step 0) named id.
func (c *simCluster) attach(id string) *simWorker {
	return c.attachWith(id, simState{digest: simStartDigest})
}

// attachWith starts a worker process holding st.
func (c *simCluster) attachWith(id string, st simState) *simWorker {
	c.t.Helper()
	c.nextInc++
	w := &simWorker{id: id, addr: id + ":7100", incarnation: c.nextInc, state: st, numerics: train.Numerics}
	c.workers[id] = w
	out, err := c.m.Attach(c.now, id, w.addr, w.incarnation, w.gen)
	if err != nil {
		c.t.Fatalf("attach %s: %v", id, err)
	}
	c.apply(out)
	return w
}

// detach kills a worker: its session ends, its queued messages are lost.
func (c *simCluster) detach(id string) {
	c.t.Helper()
	w := c.workers[id]
	if w == nil {
		c.t.Fatalf("detach %s: not attached", id)
	}
	delete(c.workers, id)
	w.inbox, w.outbox = nil, nil
	c.apply(c.m.Detach(c.now, id, w.incarnation, "session ended"))
}

// tick advances the clock by d and lets the machine see it.
func (c *simCluster) tick(d time.Duration) {
	c.t.Helper()
	c.now = c.now.Add(d)
	c.apply(c.m.Tick(c.now))
}

func (c *simCluster) pause(ids ...string) {
	for _, id := range ids {
		c.workers[id].paused = true
	}
}

func (c *simCluster) resume(ids ...string) {
	for _, id := range ids {
		c.workers[id].paused = false
	}
}

func (c *simCluster) ids() []string {
	ids := make([]string, 0, len(c.workers))
	for id := range c.workers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// stepOnce moves one message: first anything the machine sent, to its
// worker; then a message of a worker that is not paused, to the machine. It
// reports whether anything moved.
func (c *simCluster) stepOnce() bool {
	ids := c.ids()
	for _, id := range ids {
		if w := c.workers[id]; len(w.inbox) > 0 {
			msg := w.inbox[0]
			w.inbox = w.inbox[1:]
			c.deliver(w, msg)
			c.takeSnapshots()
			return true
		}
	}
	for _, id := range ids {
		if w := c.workers[id]; !w.paused && len(w.outbox) > 0 {
			msg := w.outbox[0]
			w.outbox = w.outbox[1:]
			c.apply(c.toMachine(w.id, msg))
			return true
		}
	}
	return false
}

// run moves messages until stop says so or nothing moves.
func (c *simCluster) run(stop func() bool) {
	for i := 0; ; i++ {
		if stop != nil && stop() {
			return
		}
		if i > 1_000_000 {
			c.t.Fatalf("the cluster never goes quiet")
		}
		if !c.stepOnce() {
			return
		}
	}
}

// quiesce moves messages until nothing moves.
func (c *simCluster) quiesce() { c.run(nil) }

// deliverInboxes lets the workers act on what the machine sent, without
// the machine seeing their answers yet.
func (c *simCluster) deliverInboxes() {
	for _, id := range c.ids() {
		w := c.workers[id]
		for w != nil && c.workers[id] == w && len(w.inbox) > 0 {
			msg := w.inbox[0]
			w.inbox = w.inbox[1:]
			c.deliver(w, msg)
			c.takeSnapshots()
		}
	}
}

// runUntilNext runs until the machine's next step is step: the commit of
// step-1 has just been sent and no worker has applied it yet.
func (c *simCluster) runUntilNext(step int64) {
	c.t.Helper()
	c.run(func() bool { return c.m.Next().Step >= step })
	if got := c.m.Next().Step; got != step {
		c.t.Fatalf("the cluster went quiet at step %d before reaching step %d (phase %s)", got, step, c.m.Phase())
	}
}

// start lets the initial workers settle and runs until the first
// generation is running.
func (c *simCluster) start() {
	c.t.Helper()
	c.tick(c.cfg.Settle)
	c.run(func() bool { return c.m.Phase() != Preparing })
	if c.m.Phase() != Running {
		c.t.Fatalf("after settling: phase %s, want %s", c.m.Phase(), Running)
	}
}

// totalSteps is the step count of the whole run.
func (c *simCluster) totalSteps() int64 { return int64(c.cfg.Epochs * c.spe) }

// toMachine hands a worker's message to the machine.
func (c *simCluster) toMachine(id string, msg *nicepb.WorkerMessage) Output {
	switch k := msg.Kind.(type) {
	case *nicepb.WorkerMessage_Ready:
		return c.m.Ready(c.now, id, k.Ready)
	case *nicepb.WorkerMessage_Report:
		return c.m.Report(c.now, id, k.Report)
	case *nicepb.WorkerMessage_Eval:
		return c.m.Eval(c.now, id, k.Eval)
	case *nicepb.WorkerMessage_RingFailure:
		return c.m.RingFailure(c.now, id, k.RingFailure)
	case *nicepb.WorkerMessage_Snapshotted:
		return c.m.Snapshotted(c.now, id, k.Snapshotted)
	}
	c.t.Fatalf("unexpected worker message %v", msg)
	return Output{}
}

// deliver is a worker acting on one coordinator message.
func (c *simCluster) deliver(w *simWorker, msg *nicepb.CoordinatorMessage) {
	w.got = append(w.got, msg)
	switch k := msg.Kind.(type) {
	case *nicepb.CoordinatorMessage_Plan:
		w.gen, w.rank, w.size, w.training, w.ringBroken = k.Plan.Generation, int(k.Plan.Rank), len(k.Plan.Ring), false, false
		w.ready()
	case *nicepb.CoordinatorMessage_Fetch:
		f := k.Fetch
		if f.Generation != w.gen {
			return
		}
		src, ok := c.stateAt(f.SourceAddr)
		want := simState{statexfer.FromPB(f.Position), f.StateDigest}
		if !ok || src != want {
			if f.Generation == c.m.Generation() && c.m.Phase() == Preparing {
				c.fail("worker %s: fetch of %+v from %s, which holds %+v (serving: %v)", w.id, want, f.SourceAddr, src, ok)
				return
			}
			// The source moved on or died since: the transfer fails, which
			// ends the worker's session; it attaches again, keeping its state.
			c.detach(w.id)
			c.attachWith(w.id, w.state)
			return
		}
		w.state = src
		w.ready()
	case *nicepb.CoordinatorMessage_Start:
		if k.Start.Generation != w.gen || w.training {
			return
		}
		w.training = true
		if e := k.Start.EvalEpoch; e > 0 {
			c.evaluate(w, e)
		}
		c.report(w)
	case *nicepb.CoordinatorMessage_Commit:
		cm := k.Commit
		if !w.training || cm.Generation != w.gen {
			return
		}
		if cm.Step != w.state.pos.Step {
			c.fail("worker %s at step %d got the commit of step %d", w.id, w.state.pos.Step, cm.Step)
			w.training = false
			return
		}
		w.state.digest = mixDigest(w.state.digest, cm.Step, int(cm.Batch), cm.SumLl)
		w.state.pos = w.state.pos.Next(c.spe)
		if cm.Snapshot {
			s := w.state
			w.snap = &s
			w.send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Snapshotted{Snapshotted: &nicepb.Snapshotted{
				Generation: cm.Generation, Position: statexfer.ToPB(s.pos), StateDigest: s.digest}}})
		}
		if cm.EvalEpoch > 0 {
			c.evaluate(w, cm.EvalEpoch)
		}
		if cm.Hold {
			w.training = false
			return
		}
		c.report(w)
	}
}

// report computes the worker's shard of its next step and reports it.
func (c *simCluster) report(w *simWorker) {
	pos := w.state.pos
	if pos.Epoch >= c.cfg.Epochs {
		return // trained out, as train.Trainer.Done
	}
	if w.ringBroken {
		w.training, w.ringBroken = false, false
		return
	}
	blo, bhi := train.BatchBounds(c.cfg.TrainN, c.cfg.Batch, pos.StepInEpoch)
	lo, hi := train.Shard(bhi-blo, w.rank, w.size)
	grad := uint32(mixDigest(w.state.digest, pos.Step, 0, 0) >> 32)
	params := uint32(w.state.digest) | 1
	if w.badGrad {
		grad, w.badGrad = grad^0xbad, false
	}
	if w.badParams {
		params, w.badParams = params^0xbad0, false
	}
	if w.shard != nil {
		lo, hi = w.shard(lo, hi)
		w.shard = nil
	}
	w.send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: &nicepb.Report{
		Generation: w.gen, Step: pos.Step, GradDigest: grad, SumLl: batchLL(pos.Epoch, blo+lo, blo+hi),
		Lo: int32(lo), Hi: int32(hi), ParamsDigest: params, AllreduceSeconds: 0.01, Numerics: w.numerics,
	}}})
}

func (c *simCluster) evaluate(w *simWorker, epoch int32) {
	lo, hi := train.Shard(c.cfg.EvalN, w.rank, w.size)
	w.send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Eval{Eval: &nicepb.EvalReport{
		Generation: w.gen, Epoch: epoch, SumLl: evalLL(w.state.pos.Step, lo, hi), Lo: int32(lo), Hi: int32(hi),
	}}})
}

// breakRing makes the current generation's next all-reduce fail: no member
// reports the step it computes next (a report already sent stands), each
// stops training, and from reports a RingFailure blaming peer.
func (c *simCluster) breakRing(from, peer string) {
	gen := c.m.Generation()
	for _, id := range c.m.Ring() {
		if w := c.workers[id]; w != nil && w.gen == gen {
			w.ringBroken = true
		}
	}
	c.apply(c.m.RingFailure(c.now, from, &nicepb.RingFailure{Generation: gen, PeerId: peer, Error: "stream broken"}))
}

// stateAt is what FetchState at addr serves: the coordinator's checkpoint or
// a worker's live state.
func (c *simCluster) stateAt(addr string) (simState, bool) {
	if addr == simCoordAddr {
		return c.own, true
	}
	for _, w := range c.workers {
		if w.addr == addr {
			return w.state, true
		}
	}
	return simState{}, false
}

// takeSnapshots plays the server's checkpoint writer: a requested snapshot
// is taken from its worker once that worker applied the commit, and the
// machine is told it now holds that state.
func (c *simCluster) takeSnapshots() {
	var stored []train.Position
	defer func() {
		for _, pos := range stored {
			c.apply(c.m.Stored(c.now, pos))
		}
	}()
	agreed := c.m.View().Agreed
	for i := range c.pending {
		r := &c.pending[i]
		if w := r.w; r.taken == nil && w != nil && c.workers[w.id] == w {
			switch {
			case r.Live && w.state.pos == r.Position:
				// The live state: the machine asks it of a worker that
				// does not train.
				st := w.state
				r.taken = &st
			case w.snap != nil && w.snap.pos == r.Position:
				st := *w.snap
				r.taken = &st
			}
		}
	}
	c.pending = slices.DeleteFunc(c.pending, func(r pendingSnapshot) bool {
		w := r.w
		if st := r.taken; st != nil {
			// As Server.awaitAgreement: stored only once the replicas
			// agreed on that very state.
			for _, a := range agreed {
				if a.Position == st.pos {
					if a.Digest != st.digest {
						c.fail("the snapshot at step %d from %s has digest %016x, the replicas agreed on %016x", st.pos.Step, w.id, st.digest, a.Digest)
						return true
					}
					c.own = *st
					c.m.SetOwnState(c.own.pos, c.own.digest)
					stored = append(stored, c.own.pos)
					return true
				}
			}
			return len(agreed) > 0 && agreed[0].Position.Step > st.pos.Step
		}
		switch {
		case w == nil || c.workers[w.id] != w:
			return true // the process is gone: this checkpoint fails
		case w.state.pos.Step > r.Position.Step:
			c.fail("snapshot at step %d asked of %s, whose snapshot is at %v", r.Position.Step, w.id, w.snap)
			return true
		}
		return false
	})
}

// apply checks an output against the invariants and carries it out.
func (c *simCluster) apply(out Output) {
	m := c.m
	c.outs = append(c.outs, out)
	c.logs = append(c.logs, out.Logs...)

	if g := m.Generation(); g < c.lastGen {
		c.fail("generation went back from %d to %d", c.lastGen, g)
	} else {
		c.lastGen = g
	}
	switch {
	case out.Committed != nil:
		c.checkCommit(out)
	case m.Next().Step > c.expect.Step:
		c.adopted(m.Next())
	case m.Next() != c.expect:
		c.rewound(m.Next())
	}
	c.checkSends(out)
	if r := out.Snapshot; r != nil {
		if r.Position != m.Next() || r.Generation == m.Generation() && len(m.Ring()) > 0 && r.Addr != m.Addr(m.Ring()[0]) {
			c.fail("snapshot request %+v; next %+v, ring %v", r, m.Next(), m.Ring())
		}
		var w *simWorker
		for _, x := range c.workers {
			if x.addr == r.Addr {
				w = x
			}
		}
		c.pending = append(c.pending, pendingSnapshot{SnapshotRequest: *r, w: w})
	}
	// A fetch starts at once (and holds the worker's snapshot while it
	// streams); one fetched waits for the replicas' agreement.
	defer c.takeSnapshots()
	if sc := out.Scored; sc != nil {
		c.checkScore(sc)
	}
	for _, id := range out.Disconnect {
		if slices.Contains(m.Workers(), id) {
			c.fail("disconnect of %s, which the machine still has attached", id)
		}
		delete(c.workers, id)
	}
	for _, s := range out.Sends {
		if w := c.workers[s.To]; w != nil {
			w.inbox = append(w.inbox, s.Msg)
		}
	}
}

// checkCommit checks one committed step: the next in order, its shards a
// partition of its batch, no training position used twice, every member
// at the same state.
func (c *simCluster) checkCommit(out Output) {
	cm := out.Committed
	pos := cm.Position
	if pos != c.expect {
		c.fail("committed step %+v; the ledger expects %+v", pos, c.expect)
	}
	lo, hi := train.BatchBounds(c.cfg.TrainN, c.cfg.Batch, pos.StepInEpoch)
	if cm.Batch != hi-lo {
		c.fail("step %d committed with batch %d, want %d", pos.Step, cm.Batch, hi-lo)
	}
	if err := checkPartition(cm.Shards, hi-lo); err != nil {
		c.fail("step %d: %v", pos.Step, err)
	}
	if c.used[pos.Epoch] == nil {
		c.used[pos.Epoch] = map[int]int{}
	}
	for _, s := range cm.Shards {
		for p := lo + s.Lo; p < lo+s.Hi; p++ {
			if c.used[pos.Epoch][p]++; c.used[pos.Epoch][p] > 1 {
				c.fail("position %d of epoch %d trained twice (step %d)", p, pos.Epoch, pos.Step)
			}
		}
	}
	var first *simWorker
	for _, s := range cm.Shards {
		w := c.workers[s.Worker]
		if w == nil {
			continue
		}
		if first == nil {
			first = w
		}
		if w.state.pos != pos || w.state.digest != first.state.digest {
			c.fail("step %d committed while %s holds %+v and %s %+v", pos.Step, w.id, w.state, first.id, first.state)
		}
	}
	var to []string
	for _, s := range out.Sends {
		if k := s.Msg.GetCommit(); k != nil {
			to = append(to, s.To)
			if k.Step != pos.Step || k.Generation != cm.Generation || int(k.Batch) != cm.Batch || k.SumLl != cm.SumLL ||
				k.Snapshot != cm.Snapshot {
				c.fail("commit message %v does not match the ledger's %+v", k, cm)
			}
		}
	}
	var members []string
	for _, s := range cm.Shards {
		members = append(members, s.Worker)
	}
	if !slices.Equal(to, members) {
		c.fail("step %d: commit sent to %v, the members are %v", pos.Step, to, members)
	}
	c.ledger = append(c.ledger, cm)
	c.expect = pos.Next(c.spe)
	if c.m.Next() != c.expect {
		c.fail("after committing step %d the machine's next is %+v, want %+v", pos.Step, c.m.Next(), c.expect)
	}
}

// checkPartition checks that the shards, in rank order, are the balanced
// partition of a batch of n.
func checkPartition(shards []Shard, n int) error {
	at := 0
	for r, s := range shards {
		lo, hi := train.Shard(n, r, len(shards))
		if s.Lo != at || s.Lo != lo || s.Hi != hi {
			return fmt.Errorf("shards %v do not partition the batch of %d (rank %d)", shards, n, r)
		}
		at = s.Hi
	}
	if at != n {
		return fmt.Errorf("shards %v cover %d of %d", shards, at, n)
	}
	return nil
}

// adopted checks a move of the machine's next step forwards without a
// commit: only by a coordinator that has committed nothing yet, only to a
// state every member of the generation holds.
func (c *simCluster) adopted(to train.Position) {
	if c.m.Stats().Committed > 0 {
		c.fail("next step moved forward from %+v to %+v without a commit", c.expect, to)
	}
	for _, id := range c.m.Ring() {
		if w := c.workers[id]; w == nil || w.state.pos != to {
			c.fail("went on from step %d, which member %s does not hold", to.Step, id)
		}
	}
	c.expect = to
}

// rewound checks a move of the machine's next step backwards: only to the
// coordinator's own checkpoint, only when no worker holds the newer state.
// The steps after the checkpoint are lost and will be committed again.
func (c *simCluster) rewound(to train.Position) {
	if to != c.own.pos || to.Step >= c.expect.Step {
		c.fail("next step moved from %+v to %+v without a commit (checkpoint at %+v)", c.expect, to, c.own.pos)
	}
	for _, w := range c.workers {
		if w.state.pos == c.expect {
			c.fail("rewound to the checkpoint at step %d though %s holds step %d", to.Step, w.id, c.expect.Step)
		}
	}
	c.ledger = slices.DeleteFunc(c.ledger, func(cm *Commit) bool {
		if cm.Position.Step < to.Step {
			return false
		}
		lo, _ := train.BatchBounds(c.cfg.TrainN, c.cfg.Batch, cm.Position.StepInEpoch)
		for _, s := range cm.Shards {
			for p := lo + s.Lo; p < lo+s.Hi; p++ {
				c.used[cm.Position.Epoch][p]--
			}
		}
		return true
	})
	c.scores = slices.DeleteFunc(c.scores, func(sc *nicepb.EpochScore) bool { return sc.Step > to.Step })
	c.expect = to
	c.rewinds++
}

// checkSends checks the plans, fetches and starts of an output.
func (c *simCluster) checkSends(out Output) {
	m := c.m
	attached := m.Workers()
	var planned, started []string
	for _, s := range out.Sends {
		if !slices.Contains(attached, s.To) {
			c.fail("message to %s, which is not attached", s.To)
		}
		switch k := s.Msg.Kind.(type) {
		case *nicepb.CoordinatorMessage_Plan:
			p := k.Plan
			planned = append(planned, s.To)
			var ring []string
			for _, r := range p.Ring {
				ring = append(ring, r.Id)
				if r.Addr != m.Addr(r.Id) {
					c.fail("plan gives %s the address %s, it attached from %s", r.Id, r.Addr, m.Addr(r.Id))
				}
			}
			if p.Generation != m.Generation() || !slices.Equal(ring, m.Ring()) || ring[p.Rank] != s.To ||
				statexfer.FromPB(p.Position) != m.Next() {
				c.fail("plan %v to %s; generation %d, ring %v, next %+v", p, s.To, m.Generation(), m.Ring(), m.Next())
			}
		case *nicepb.CoordinatorMessage_Fetch:
			f := k.Fetch
			if f.Generation != m.Generation() || statexfer.FromPB(f.Position) != m.Next() || !slices.Contains(m.Ring(), s.To) {
				c.fail("fetch %v to %s; generation %d, next %+v", f, s.To, m.Generation(), m.Next())
			}
		case *nicepb.CoordinatorMessage_Start:
			started = append(started, s.To)
			if k.Start.Generation != m.Generation() {
				c.fail("start of generation %d in generation %d", k.Start.Generation, m.Generation())
			}
		}
	}
	if planned != nil && (!slices.Equal(planned, m.Ring()) || !slices.IsSorted(planned)) {
		c.fail("generation %d planned for %v; ring %v", m.Generation(), planned, m.Ring())
	}
	if started != nil {
		if !slices.Equal(started, m.Ring()) {
			c.fail("generation %d started for %v; ring %v", m.Generation(), started, m.Ring())
		}
		// Every member must hold the very same state, the one at next.
		for _, id := range started {
			w := c.workers[id]
			if w != nil && (w.state.pos != m.Next() || w.state.digest != c.workers[started[0]].state.digest) {
				c.fail("generation %d started with %s at %+v, %s at %+v, next %+v",
					m.Generation(), id, w.state, started[0], c.workers[started[0]].state, m.Next())
			}
		}
	}
}

// checkScore checks an epoch's score: each epoch once, in order, computed
// over the whole scored set from the state at the end of that epoch.
func (c *simCluster) checkScore(sc *nicepb.EpochScore) {
	end := int64(sc.Epoch) * int64(c.spe)
	want := evalLL(end, 0, c.cfg.EvalN) / float64(c.cfg.EvalN)
	if sc.TestLl != want || sc.Step != end {
		c.fail("epoch %d scored %v at step %d, want %v at step %d", sc.Epoch, sc.TestLl, sc.Step, want, end)
	}
	if n := len(c.scores); n > 0 && c.scores[n-1].Epoch > sc.Epoch {
		c.fail("epoch %d scored after epoch %d", sc.Epoch, c.scores[n-1].Epoch)
	}
	if n := len(c.scores); n > 0 && c.scores[n-1].Epoch == sc.Epoch {
		return // scored again after a rewind to its end: the same score
	}
	c.scores = append(c.scores, sc)
}

// checkLedger checks the ledger of a finished run: every step of every
// epoch once, in order, and every training position used exactly once.
func (c *simCluster) checkLedger() {
	c.t.Helper()
	if int64(len(c.ledger)) != c.totalSteps() {
		c.fail("ledger has %d steps, the run %d", len(c.ledger), c.totalSteps())
	}
	for i, cm := range c.ledger {
		if cm.Position.Step != int64(i) || cm.Position.Epoch != i/c.spe || cm.Position.StepInEpoch != i%c.spe {
			c.fail("ledger line %d is step %+v", i, cm.Position)
		}
	}
	for e := range c.cfg.Epochs {
		for p := range c.cfg.TrainN {
			if n := c.used[e][p]; n != 1 {
				c.fail("position %d of epoch %d trained %d times", p, e, n)
			}
		}
	}
}

// checkFinished checks a run that trained out: finished, the ledger whole,
// every epoch scored, every worker at the final state of an undisturbed run.
func (c *simCluster) checkFinished() {
	c.t.Helper()
	if c.m.Phase() != Finished {
		c.fail("phase %s, want %s", c.m.Phase(), Finished)
	}
	c.checkLedger()
	if len(c.scores) != c.cfg.Epochs {
		c.fail("%d epochs scored, want %d", len(c.scores), c.cfg.Epochs)
	}
	final := referenceState(c.cfg, c.totalSteps())
	for _, id := range c.m.Ring() {
		if w := c.workers[id]; w != nil && w.state != final {
			c.fail("worker %s ends at %+v, an undisturbed run at %+v", id, w.state, final)
		}
	}
}

// --- helpers for assertions on outputs ---

// lastOut is the newest output.
func (c *simCluster) lastOut() Output { return c.outs[len(c.outs)-1] }

// lastCommitMsg is the commit message of the newest output that committed.
func (c *simCluster) lastCommitMsg() *nicepb.Commit {
	for i := len(c.outs) - 1; i >= 0; i-- {
		for _, s := range c.outs[i].Sends {
			if k := s.Msg.GetCommit(); k != nil {
				return k
			}
		}
	}
	return nil
}

func isEmpty(out Output) bool {
	return len(out.Sends) == 0 && out.Snapshot == nil && out.Committed == nil && out.Scored == nil &&
		len(out.Disconnect) == 0 && len(out.Logs) == 0
}

func wantEq[T comparable](t testing.TB, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// --- scenarios ---

func TestMachineStartsAndTrainsInOrder(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w3", "w1", "w2")
	wantEq(t, "phase before settling", c.m.Phase(), Idle)
	c.tick(c.cfg.Settle / 2)
	wantEq(t, "generation before settling", c.m.Generation(), 0)
	c.tick(c.cfg.Settle / 2)
	wantEq(t, "generation after settling", c.m.Generation(), 1)
	c.runUntilNext(5)
	for rank, id := range []string{"w1", "w2", "w3"} {
		w := c.workers[id]
		p := plans(w)
		if len(p) != 1 || p[0].Generation != 1 || int(p[0].Rank) != rank || p[0].Position.GetStep() != 0 {
			t.Errorf("%s got plans %v, want one of generation 1 at rank %d from step 0", id, p, rank)
		}
		if s := starts(w); len(s) != 1 || s[0].Generation != 1 || s[0].EvalEpoch != 0 {
			t.Errorf("%s got starts %v", id, s)
		}
		if f := fetches(w); len(f) != 0 {
			t.Errorf("%s fetched %v though it holds the initial state", id, f)
		}
	}
	for i, cm := range c.ledger {
		wantEq(t, fmt.Sprintf("ledger[%d].Step", i), cm.Position.Step, int64(i))
	}
	c.quiesce()
	c.checkFinished()
	st := c.m.Stats()
	wantEq(t, "generations", st.Generations, 1)
	wantEq(t, "committed", st.Committed, c.totalSteps())
	wantEq(t, "redone", st.Redone, 0)
	// The last batch of each epoch is the remainder: 50 = 6*8 + 2.
	wantEq(t, "batch of step 6", c.ledger[6].Batch, 2)
	wantEq(t, "shards of step 6", len(c.ledger[6].Shards), 3)
}

// Each committed shard carries the numerics its worker said. A ring that
// mixes builds of other numerics trains on (the digests agree), and the
// coordinator says once a generation that no single build replays it.
func TestMachineNumerics(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
	c.workers["w2"].numerics = train.Numerics + 1
	c.tick(c.cfg.Settle)
	c.runUntilNext(5)
	wantEq(t, "generation", c.m.Generation(), 1)
	for _, cm := range c.ledger {
		for _, sh := range cm.Shards {
			want := train.Numerics
			if sh.Worker == "w2" {
				want++
			}
			if sh.Numerics != want {
				t.Fatalf("step %d: shard %+v, want numerics %d", cm.Position.Step, sh, want)
			}
		}
	}
	var said int
	for _, l := range c.logs {
		if strings.Contains(l, "mixes builds") {
			said++
			if !strings.Contains(l, "worker w2: numerics") || !strings.Contains(l, "run one build on every worker") {
				t.Errorf("the log does not name the worker and what to do: %s", l)
			}
		}
	}
	wantEq(t, "logs of the mixed generation", said, 1)
}

func TestMachineMemberDiesMidStep(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
	c.start()
	c.runUntilNext(3)
	c.pause("w3")
	c.quiesce() // w1 and w2 report step 3; w3's report waits
	wantEq(t, "next", c.m.Next().Step, 3)
	wantEq(t, "reports of step 3", len(c.m.reports), 2)

	c.detach("w3")
	wantEq(t, "generation", c.m.Generation(), 2)
	wantEq(t, "phase", c.m.Phase(), Preparing)
	wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2")
	wantEq(t, "redone", c.m.Stats().Redone, 1)
	wantEq(t, "next after the death", c.m.Next().Step, 3)

	c.quiesce()
	c.checkFinished()
	wantEq(t, "step 3 committed by generation", c.ledger[3].Generation, 2)
	wantEq(t, "shards of step 3", len(c.ledger[3].Shards), 2)
}

func TestMachineMemberDiesRightAfterCommit(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
	c.start()
	c.runUntilNext(4) // the commit of step 3 is on its way
	c.detach("w2")
	wantEq(t, "generation", c.m.Generation(), 2)
	if in := c.workers["w1"].inbox; len(in) != 2 || in[0].GetCommit().GetStep() != 3 || in[1].GetPlan().GetGeneration() != 2 {
		t.Fatalf("w1's inbox %v, want the commit of step 3, then the plan of generation 2", in)
	}
	c.quiesce()
	p := plans(c.workers["w1"])
	wantEq(t, "w1's second plan starts at step", p[len(p)-1].Position.GetStep(), 4)
	c.checkFinished()
	wantEq(t, "step 3 committed by generation", c.ledger[3].Generation, 1)
	wantEq(t, "step 4 committed by generation", c.ledger[4].Generation, 2)
}

func TestMachineJoinWhileRunning(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
	c.start()
	c.runUntilNext(2)
	w4 := c.attach("w4")
	c.tick(c.cfg.Settle / 2)
	c.runUntilNext(4)
	wantEq(t, "generation before the newcomer settles", c.m.Generation(), 1)
	if len(w4.got) != 0 {
		t.Errorf("the newcomer was sent %v before settling", w4.got)
	}
	if cm := c.lastCommitMsg(); cm.Hold {
		t.Errorf("commit of step %d holds before the newcomer settled", cm.Step)
	}

	c.tick(c.cfg.Settle / 2)
	wantEq(t, "generation right after settling", c.m.Generation(), 1) // no step is abandoned for a joiner
	c.runUntilNext(5)
	out := c.lastOut()
	if cm := c.lastCommitMsg(); !cm.Hold || cm.Step != 4 {
		t.Errorf("the first commit after settling is %v, want step 4 held", cm)
	}
	wantEq(t, "generation after the held commit", c.m.Generation(), 2)
	wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2,w3,w4")
	var planned int
	for _, s := range out.Sends {
		if s.Msg.GetPlan() != nil {
			planned++
		}
	}
	wantEq(t, "plans sent with the held commit", planned, 4)

	c.run(func() bool { return c.m.Phase() == Running })
	c.deliverInboxes()
	f := fetches(w4)
	if len(f) != 1 || f[0].SourceAddr != c.workers["w1"].addr || f[0].Position.GetStep() != 5 ||
		f[0].StateDigest != referenceState(c.cfg, 5).digest {
		t.Errorf("the newcomer fetched %v, want the state at step 5 from w1", f)
	}
	for _, id := range []string{"w1", "w2", "w3"} {
		if f := fetches(c.workers[id]); len(f) != 0 {
			t.Errorf("%s, which holds the state, fetched %v", id, f)
		}
	}
	for _, id := range c.ids() {
		if s := starts(c.workers[id]); len(s) == 0 || s[len(s)-1].Generation != 2 {
			t.Errorf("%s was not started in generation 2: %v", id, s)
		}
	}
	c.quiesce()
	c.checkFinished()
	wantEq(t, "redone", c.m.Stats().Redone, 0)
	wantEq(t, "shards of step 5", len(c.ledger[5].Shards), 4)
}

// TestMachineIgnoresStaleMessages sends messages of other generations and
// steps to a generation waiting for its last report, then lets it go on.
func TestMachineIgnoresStaleMessages(t *testing.T) {
	ready := func(gen uint64, step int64) *nicepb.Ready {
		return &nicepb.Ready{Generation: gen, HasState: true, Position: &nicepb.Position{Step: step}, StateDigest: 1}
	}
	report := func(gen uint64, step int64) *nicepb.Report {
		return &nicepb.Report{Generation: gen, Step: step, Lo: 3, Hi: 6, GradDigest: 7}
	}
	eval := func(gen uint64, epoch int32) *nicepb.EvalReport {
		return &nicepb.EvalReport{Generation: gen, Epoch: epoch, Lo: 7, Hi: 14}
	}
	cases := []struct {
		name string
		from string
		send func(c *simCluster) Output
	}{
		{"ready of an older generation", "w1", func(c *simCluster) Output { return c.m.Ready(c.now, "w1", ready(1, 7)) }},
		{"ready of the running generation", "w2", func(c *simCluster) Output { return c.m.Ready(c.now, "w2", ready(2, 7)) }},
		{"report of an older generation", "w2", func(c *simCluster) Output { return c.m.Report(c.now, "w2", report(1, 7)) }},
		{"report of a newer generation", "w2", func(c *simCluster) Output { return c.m.Report(c.now, "w2", report(3, 7)) }},
		{"report of the next step", "w2", func(c *simCluster) Output { return c.m.Report(c.now, "w2", report(2, 8)) }},
		{"report of the previous step", "w2", func(c *simCluster) Output { return c.m.Report(c.now, "w2", report(2, 6)) }},
		{"report from a worker gone", "w4", func(c *simCluster) Output { return c.m.Report(c.now, "w4", report(2, 7)) }},
		{"report from a stranger", "x", func(c *simCluster) Output { return c.m.Report(c.now, "x", report(2, 7)) }},
		{"evaluation of an older generation", "w2", func(c *simCluster) Output { return c.m.Eval(c.now, "w2", eval(1, 1)) }},
		{"evaluation of another epoch", "w2", func(c *simCluster) Output { return c.m.Eval(c.now, "w2", eval(2, 2)) }},
		{"ring failure of an older generation", "w1", func(c *simCluster) Output {
			return c.m.RingFailure(c.now, "w1", &nicepb.RingFailure{Generation: 1, PeerId: "w2"})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := w2Late(t)
			if out := tc.send(c); !isEmpty(out) {
				t.Errorf("output %+v, want none", out)
			}
			wantEq(t, "generation", c.m.Generation(), 2)
			wantEq(t, "phase", c.m.Phase(), Running)
			wantEq(t, "reports in", len(c.m.reports), 2)
			c.tick(c.cfg.RingGrace) // a stale ring failure must not break the generation
			wantEq(t, "generation after the ring grace", c.m.Generation(), 2)
			c.resume("w2")
			c.quiesce()
			c.checkFinished()
			wantEq(t, "step 7 committed by generation", c.ledger[7].Generation, 2)
			wantEq(t, "epoch 1 scored", c.scores[0].Epoch, 1)
		})
	}
}

func TestMachineRejectsBadReports(t *testing.T) {
	cases := []struct {
		name     string
		fault    func(w *simWorker)
		mismatch int64
		ledger   int64
	}{
		{"gradient digest differs", func(w *simWorker) { w.badGrad = true }, 1, 0},
		{"parameter digest differs", func(w *simWorker) { w.badParams = true }, 1, 0},
		{"shard overlaps its neighbour", func(w *simWorker) { w.shard = func(lo, hi int) (int, int) { return lo - 1, hi } }, 0, 1},
		{"shard leaves a gap", func(w *simWorker) { w.shard = func(lo, hi int) (int, int) { return lo + 1, hi } }, 0, 1},
		{"shard is another rank's", func(w *simWorker) {
			w.shard = func(lo, hi int) (int, int) { return train.Shard(8, 0, 3) }
		}, 0, 1},
		{"shard is empty", func(w *simWorker) { w.shard = func(lo, hi int) (int, int) { return lo, lo } }, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
			c.start()
			c.runUntilNext(3)
			tc.fault(c.workers["w2"])
			c.run(func() bool { return c.m.Generation() > 1 })
			out := c.lastOut()
			if out.Committed != nil {
				t.Errorf("step 3 committed with a bad report: %+v", out.Committed)
			}
			wantEq(t, "generation", c.m.Generation(), 2)
			wantEq(t, "next", c.m.Next().Step, 3)
			st := c.m.Stats()
			wantEq(t, "digest mismatches", st.DigestMismatch, tc.mismatch)
			wantEq(t, "ledger errors", st.LedgerErrors, tc.ledger)
			wantEq(t, "redone", st.Redone, 1)
			c.quiesce()
			c.checkFinished()
			wantEq(t, "step 3 committed by generation", c.ledger[3].Generation, 2)
		})
	}
}

func TestMachineRingFailure(t *testing.T) {
	t.Run("blamed peer then leaves", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(3)
		c.breakRing("w1", "w2")
		wantEq(t, "generation right after the failure", c.m.Generation(), 1)
		c.tick(c.cfg.RingGrace / 4)
		c.detach("w2")
		wantEq(t, "generation", c.m.Generation(), 2)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w3")
		c.tick(c.cfg.RingGrace) // the failure is settled: no further generation
		wantEq(t, "generation after the grace", c.m.Generation(), 2)
		c.quiesce()
		c.checkFinished()
	})
	t.Run("blamed peer stays", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(3)
		c.breakRing("w1", "w2")
		c.tick(c.cfg.RingGrace - time.Millisecond)
		wantEq(t, "generation within the grace", c.m.Generation(), 1)
		c.tick(time.Millisecond)
		wantEq(t, "generation after the grace", c.m.Generation(), 2)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2,w3")
		if d := c.lastOut().Disconnect; len(d) != 0 {
			t.Errorf("disconnected %v after one blame", d)
		}
		wantEq(t, "redone", c.m.Stats().Redone, 1)
		c.quiesce()
		c.checkFinished()
	})
	t.Run("blamed twice", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(3)
		c.breakRing("w1", "w2")
		c.tick(c.cfg.RingGrace)
		c.run(func() bool { return c.m.Phase() == Running })
		c.runUntilNext(5)
		c.breakRing("w3", "w2")
		c.tick(c.cfg.RingGrace)
		if d := c.lastOut().Disconnect; !slices.Equal(d, []string{"w2"}) {
			t.Errorf("disconnected %v, want w2", d)
		}
		wantEq(t, "generation", c.m.Generation(), 3)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w3")
		c.quiesce()
		c.checkFinished()
	})
	// A member nobody can reach (a wrong advertised address, NAT) is named
	// by both neighbours and names one of them back: only it is blamed, and
	// dropped after its second broken ring; the healthy neighbour stays.
	t.Run("the member most name is blamed", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(3)
		unreachable := func() {
			gen := c.m.Generation()
			c.breakRing("w1", "w3")
			c.apply(c.m.RingFailure(c.now, "w2", &nicepb.RingFailure{Generation: gen, PeerId: "w3", Error: "dialing: deadline exceeded"}))
			c.apply(c.m.RingFailure(c.now, "w3", &nicepb.RingFailure{Generation: gen, PeerId: "w2", Error: "accepting: deadline exceeded"}))
			c.tick(c.cfg.RingGrace)
		}
		unreachable()
		if d := c.lastOut().Disconnect; len(d) != 0 {
			t.Errorf("disconnected %v after one broken ring", d)
		}
		wantEq(t, "ring after one broken ring", strings.Join(c.m.Ring(), ","), "w1,w2,w3")
		c.run(func() bool { return c.m.Phase() == Running })
		c.runUntilNext(5)
		unreachable()
		if d := c.lastOut().Disconnect; !slices.Equal(d, []string{"w3"}) {
			t.Errorf("disconnected %v, want w3 alone", d)
		}
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2")
		c.quiesce()
		c.checkFinished()
	})
	// Dropped for breaking rings, a worker that attaches again at once (as
	// a worker does) waits 30 s before a generation takes it, 60 s after a
	// second drop, and training goes on meanwhile without a generation
	// change; a committed step with it clears the record.
	t.Run("a dropped worker waits before it joins again", func(t *testing.T) {
		cfg := simConfig()
		cfg.Epochs = 20
		c := newSimCluster(t, cfg, "w1", "w2", "w3")
		c.start()
		c.runUntilNext(3)
		unreachable := func() {
			for i := range 2 {
				if i > 0 {
					c.run(func() bool { return c.m.Phase() == Running })
				}
				gen := c.m.Generation()
				c.breakRing("w1", "w3")
				c.apply(c.m.RingFailure(c.now, "w2", &nicepb.RingFailure{Generation: gen, PeerId: "w3", Error: "dialing: deadline exceeded"}))
				c.tick(c.cfg.RingGrace)
			}
			if !slices.Contains(c.lastOut().Disconnect, "w3") {
				t.Fatalf("w3 not dropped: %v", c.lastOut().Disconnect)
			}
		}
		rejoins := func(bench time.Duration) {
			dropped := c.now
			c.attach("w3")
			gen := c.m.Generation()
			c.runUntilNext(c.m.Next().Step + 3)
			wantEq(t, "generation while w3 is benched", c.m.Generation(), gen)
			wantEq(t, "ring while w3 is benched", strings.Join(c.m.Ring(), ","), "w1,w2")
			if d := dropped.Add(bench - time.Millisecond).Sub(c.now); d > 0 {
				c.tick(d)
			}
			c.runUntilNext(c.m.Next().Step + 1)
			wantEq(t, "ring just before the bench ends", strings.Join(c.m.Ring(), ","), "w1,w2")
			c.tick(time.Millisecond) // the bench is over
			c.tick(c.cfg.Settle)     // and the join settled: the next commit holds for it
			c.run(func() bool { return slices.Contains(c.m.Ring(), "w3") && c.m.Phase() == Running })
			wantEq(t, "ring once the bench is over", strings.Join(c.m.Ring(), ","), "w1,w2,w3")
		}
		unreachable()
		rejoins(30 * time.Second)
		unreachable()
		rejoins(60 * time.Second)
		c.runUntilNext(c.m.Next().Step + 2)
		if _, ok := c.m.benched["w3"]; ok {
			t.Fatal("w3 is still on record after committing steps")
		}
		c.quiesce()
		c.checkFinished()
	})
}

func TestMachineEvaluation(t *testing.T) {
	t.Run("at the end of an epoch", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(int64(c.spe))
		cm := c.lastCommitMsg()
		if cm.EvalEpoch != 1 || !cm.Snapshot || cm.Hold {
			t.Errorf("the commit ending epoch 0 is %v, want eval_epoch 1 and a snapshot", cm)
		}
		want := train.Position{Step: int64(c.spe), Epoch: 1}
		if r := c.lastOut().Snapshot; r == nil || r.Position != want || r.Addr != c.workers["w1"].addr {
			t.Errorf("snapshot request %+v, want %+v from w1", r, want)
		}
		c.run(func() bool { return len(c.scores) > 0 })
		if len(c.scores) != 1 {
			t.Fatalf("epoch 1 not scored")
		}
		sc := c.scores[0]
		wantEq(t, "score", sc.TestLl, evalLL(int64(c.spe), 0, c.cfg.EvalN)/float64(c.cfg.EvalN))
		wantEq(t, "own checkpoint", c.own, referenceState(c.cfg, int64(c.spe)))
		c.quiesce()
		c.checkFinished()
	})
	t.Run("a member dies while scoring", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(int64(c.spe))
		c.pause("w3")
		c.quiesce()
		wantEq(t, "evaluations in", len(c.m.evals), 2)
		c.detach("w3")
		c.run(func() bool { return c.m.Phase() == Running })
		c.deliverInboxes()
		for _, id := range c.ids() {
			s := starts(c.workers[id])
			if s[len(s)-1].EvalEpoch != 1 {
				t.Errorf("%s started generation 2 with %v, want eval_epoch 1", id, s[len(s)-1])
			}
		}
		c.quiesce()
		c.checkFinished()
	})
	t.Run("a member dies while scoring the last epoch", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(c.totalSteps())
		wantEq(t, "phase", c.m.Phase(), Finished)
		c.pause("w3")
		c.quiesce()
		c.detach("w3")
		c.quiesce()
		c.checkFinished()
	})
}

func TestMachineCheckpoints(t *testing.T) {
	t.Run("every few steps and at epoch ends", func(t *testing.T) {
		cfg := simConfig()
		cfg.CheckpointEvery = 3
		c := newSimCluster(t, cfg, "w1", "w2")
		c.start()
		c.quiesce()
		c.checkFinished()
		var got, want []int64
		for s := int64(1); s <= c.totalSteps(); s++ {
			if s%3 == 0 || s%int64(c.spe) == 0 {
				want = append(want, s)
			}
		}
		// Once the last epoch is scored, the final state is taken again,
		// live, so that the checkpoint holds that score too.
		want = append(want, c.totalSteps())
		for _, out := range c.outs {
			if r := out.Snapshot; r != nil {
				got = append(got, r.Position.Step)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("snapshots at %v, want %v", got, want)
		}
		wantEq(t, "own checkpoint", c.own, referenceState(cfg, c.totalSteps()))
	})
	t.Run("on request", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2")
		c.start()
		c.runUntilNext(2)
		c.m.RequestSnapshot()
		c.runUntilNext(3)
		if r := c.lastOut().Snapshot; r == nil || r.Position.Step != 3 {
			t.Errorf("snapshot request %+v, want one at step 3", r)
		}
		c.runUntilNext(4)
		if r := c.lastOut().Snapshot; r != nil {
			t.Errorf("snapshot request %+v after the requested one", r)
		}
	})
	t.Run("stop", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2")
		c.start()
		c.runUntilNext(2)
		c.m.RequestStop()
		c.runUntilNext(3)
		cm := c.lastCommitMsg()
		if !cm.Hold || !cm.Snapshot {
			t.Errorf("the commit after a stop request is %v, want hold and snapshot", cm)
		}
		wantEq(t, "phase", c.m.Phase(), Holding)
		c.quiesce()
		wantEq(t, "next", c.m.Next().Step, 3)
		wantEq(t, "own checkpoint", c.own, referenceState(c.cfg, 3))
		// Holding is final: neither time nor membership restarts training.
		c.attach("w3")
		c.tick(time.Minute)
		c.detach("w1")
		c.quiesce()
		wantEq(t, "phase at the end", c.m.Phase(), Holding)
		wantEq(t, "generation at the end", c.m.Generation(), 1)
		wantEq(t, "next at the end", c.m.Next().Step, 3)
	})
}

func TestMachineEveryWorkerLost(t *testing.T) {
	cfg := simConfig()
	cfg.CheckpointEvery = 3
	t.Run("a newcomer resumes from the checkpoint", func(t *testing.T) {
		c := newSimCluster(t, cfg, "w1", "w2")
		c.start()
		c.runUntilNext(5)
		c.deliverInboxes()
		wantEq(t, "own checkpoint", c.own.pos.Step, 3)
		c.detach("w1")
		c.detach("w2")
		wantEq(t, "phase", c.m.Phase(), Idle)

		w9 := c.attach("w9")
		c.tick(cfg.Settle)
		c.run(func() bool { return c.m.Phase() == Running })
		wantEq(t, "rewinds", c.rewinds, 1)
		wantEq(t, "next", c.m.Next().Step, 3)
		c.deliverInboxes()
		f := fetches(w9)
		if len(f) != 1 || f[0].SourceAddr != simCoordAddr || f[0].Position.GetStep() != 3 || f[0].StateDigest != c.own.digest {
			t.Errorf("the newcomer fetched %v, want the checkpoint at step 3 from the coordinator", f)
		}
		c.quiesce()
		c.checkFinished()
	})
	t.Run("an epoch's score pending past the checkpoint", func(t *testing.T) {
		c := newSimCluster(t, cfg, "w1", "w2")
		c.start()
		c.runUntilNext(int64(c.spe)) // epoch 0 ends; its score is pending
		// w1, asked for the epoch-end snapshot, dies before applying the
		// commit; then w2 dies too. The checkpoint is at step 6.
		c.detach("w1")
		c.detach("w2")
		wantEq(t, "own checkpoint", c.own.pos.Step, 6)
		w9 := c.attach("w9")
		c.tick(cfg.Settle)
		c.run(func() bool { return c.m.Phase() == Running })
		c.deliverInboxes()
		if s := starts(w9); len(s) != 1 || s[0].EvalEpoch != 0 {
			t.Errorf("the newcomer at step 6 got starts %v, want one scoring nothing", s)
		}
		c.quiesce()
		c.checkFinished() // epoch 1 is scored once, from the state at step 7
	})
	t.Run("the holder returns while a newcomer is planned", func(t *testing.T) {
		c := newSimCluster(t, cfg, "w1")
		c.start()
		c.runUntilNext(5)
		c.deliverInboxes()
		c.attach("w3") // fresh, waits for the next generation
		// w1's session drops: generation 2 is w3 alone, which lacks the
		// state; then w1 attaches again with its state at step 5.
		c.detach("w1")
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w3")
		c.attachWith("w1", referenceState(cfg, 5))
		c.run(func() bool { return c.m.Phase() == Running })
		wantEq(t, "rewinds", c.rewinds, 0)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w3")
		wantEq(t, "next", c.m.Next().Step, 5)
		c.quiesce()
		c.checkFinished()
	})
}

func TestMachineTimeouts(t *testing.T) {
	t.Run("step", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.tick(c.cfg.StepTimeout / 2) // the clock of a step starts at the commit before it
		c.runUntilNext(3)
		c.pause("w2")
		c.quiesce()
		c.tick(c.cfg.StepTimeout - time.Millisecond)
		wantEq(t, "generation before the timeout", c.m.Generation(), 1)
		c.tick(time.Millisecond)
		wantEq(t, "generation after the timeout", c.m.Generation(), 2)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2,w3")
		wantEq(t, "redone", c.m.Stats().Redone, 1)
		c.resume("w2") // its stale report of generation 1 arrives first
		c.quiesce()
		c.checkFinished()
	})
	t.Run("preparation", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.pause("w2")
		c.tick(c.cfg.Settle)
		c.quiesce()
		wantEq(t, "phase", c.m.Phase(), Preparing)
		c.tick(c.cfg.PrepareTimeout - time.Millisecond)
		wantEq(t, "generation before the timeout", c.m.Generation(), 1)
		c.tick(time.Millisecond)
		if d := c.lastOut().Disconnect; !slices.Equal(d, []string{"w2"}) {
			t.Errorf("disconnected %v, want w2", d)
		}
		wantEq(t, "generation after the timeout", c.m.Generation(), 2)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w3")
		c.quiesce()
		c.checkFinished()
	})
	t.Run("fetch", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2")
		c.start()
		c.runUntilNext(3)
		w3 := c.attach("w3")
		c.tick(c.cfg.Settle)
		c.runUntilNext(4) // held: generation 2 with w3
		c.deliverInboxes()
		c.pause("w3")
		c.quiesce() // w3's Ready asks it to fetch; the fetch never ends
		if len(fetches(w3)) != 0 {
			t.Fatalf("w3 fetched while paused")
		}
		c.resume("w3")
		c.run(func() bool { return len(w3.inbox) > 0 && w3.inbox[0].GetFetch() != nil })
		w3.inbox = nil // the fetch hangs
		c.quiesce()
		wantEq(t, "phase", c.m.Phase(), Preparing)
		c.tick(c.cfg.PrepareTimeout)
		wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w2")
		c.quiesce()
		c.checkFinished()
	})
}

func TestMachineFinished(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2")
	c.start()
	c.quiesce()
	c.checkFinished()
	outs := len(c.outs)
	c.tick(time.Hour)
	if len(c.outs) != outs+1 || !isEmpty(c.lastOut()) {
		t.Errorf("a finished machine acted on time: %+v", c.lastOut())
	}

	late := c.attach("late")
	c.tick(c.cfg.Settle / 2)
	wantEq(t, "generation before the newcomer settles", c.m.Generation(), 1)
	c.tick(c.cfg.Settle / 2)
	wantEq(t, "generation", c.m.Generation(), 2)
	c.quiesce()
	final := referenceState(c.cfg, c.totalSteps())
	wantEq(t, "the newcomer's state", late.state, final)
	if f := fetches(late); len(f) != 1 || f[0].SourceAddr != c.workers["w1"].addr {
		t.Errorf("the newcomer fetched %v, want the final state from w1", f)
	}
	if s := starts(late); len(s) != 1 || s[0].EvalEpoch != 0 {
		t.Errorf("the newcomer got starts %v", s)
	}
	c.checkFinished()
	wantEq(t, "committed", c.m.Stats().Committed, c.totalSteps())
}

// TestMachineRandomEvents runs many clusters through random joins, deaths,
// restarts, reconnects, ring failures, slow workers, bad reports and the
// passing of time; every
// output is checked as it comes (see simCluster.apply), and each run must
// then finish with the ledger and the final state of an undisturbed run.
func TestMachineRandomEvents(t *testing.T) {
	iterations := 300
	if testing.Short() {
		iterations = 50
	}
	names := []string{"a", "b", "c", "d", "e"}
	for it := range iterations {
		rng := rand.New(rand.NewPCG(20240601, uint64(it)))
		cfg := simConfig()
		cfg.Epochs = 2
		cfg.CheckpointEvery = rng.IntN(4)
		cfg.MinWorkers = 1 + rng.IntN(2)
		c := newSimCluster(t, cfg, names[:1+rng.IntN(3)]...)
		pick := func(ids []string) string { return ids[rng.IntN(len(ids))] }
		for range 250 {
			if t.Failed() {
				t.Fatalf("iteration %d (seed 20240601/%d) broke an invariant", it, it)
			}
			switch r := rng.IntN(100); {
			case r < 55:
				for range 1 + rng.IntN(12) {
					c.stepOnce()
				}
			case r < 63:
				c.attach(pick(names)) // a new worker, or a restart of one attached
			case r < 70:
				if ids := c.ids(); len(ids) > 0 {
					c.detach(pick(ids))
				}
			case r < 75:
				if ring := c.m.Ring(); len(ring) > 0 && c.m.Phase() == Running {
					c.breakRing(pick(ring), pick(ring))
				}
			case r < 82:
				if ids := c.ids(); len(ids) > 0 {
					w := c.workers[pick(ids)]
					w.paused = !w.paused
				}
			case r < 84:
				c.m.RequestSnapshot()
			case r < 86:
				if ids := c.ids(); len(ids) > 0 {
					w := c.workers[pick(ids)]
					switch rng.IntN(3) {
					case 0:
						w.badGrad = true
					case 1:
						w.badParams = true
					default:
						w.shard = func(lo, hi int) (int, int) { return lo, hi + 1 }
					}
				}
			case r < 88:
				if ids := c.ids(); len(ids) > 0 {
					// The session drops; the same process attaches again.
					w := c.workers[pick(ids)]
					c.detach(w.id)
					c.attachWith(w.id, w.state)
				}
			default:
				c.tick([]time.Duration{100 * time.Millisecond, 500 * time.Millisecond, time.Second, 3 * time.Second, 6 * time.Second}[rng.IntN(5)])
			}
		}
		// Calm: nobody is slow, enough workers attach, time passes.
		for _, w := range c.workers {
			w.paused = false
		}
		for range 20 {
			for len(c.workers) < cfg.MinWorkers {
				for _, n := range names {
					if c.workers[n] == nil {
						c.attach(n)
						break
					}
				}
			}
			c.quiesce()
			c.tick(cfg.Settle)
			c.quiesce()
			if c.m.Phase() == Finished && !c.m.joinPending && c.m.evalEpoch == 0 {
				break
			}
			c.tick(cfg.PrepareTimeout)
		}
		c.checkFinished()
		for _, id := range c.ids() {
			if !slices.Contains(c.m.Ring(), id) {
				t.Errorf("worker %s is attached but not in the final ring %v", id, c.m.Ring())
			}
		}
		if t.Failed() {
			t.Fatalf("iteration %d (seed 20240601/%d) did not finish cleanly", it, it)
		}
	}
}

// A worker that joins while training is held at the step limit is brought to
// the held state, and training stays held.
func TestMachineJoinWhileHeldAtStepLimit(t *testing.T) {
	cfg := simConfig()
	cfg.StopAt = 5
	c := newSimCluster(t, cfg, "w1", "w2")
	c.start()
	c.quiesce()
	wantEq(t, "phase at the step limit", c.m.Phase(), Holding)
	wantEq(t, "next step", c.m.Next().Step, int64(5))

	late := c.attach("late")
	c.tick(c.cfg.Settle)
	c.quiesce()
	wantEq(t, "the newcomer's state", late.state, referenceState(c.cfg, 5))
	wantEq(t, "phase after the newcomer joined", c.m.Phase(), Holding)
	wantEq(t, "committed", c.m.Stats().Committed, int64(5))
	if s := starts(late); len(s) != 0 {
		t.Errorf("a held generation was started: %v", s)
	}
}

// A coordinator restarted from its checkpoint at step 5 whose workers all
// kept the state at step 7 goes on from step 7 rather than redoing two steps;
// if they disagree, it falls back to the checkpoint.
func TestMachineRestartAdoptsTheWorkersNewerState(t *testing.T) {
	for _, agree := range []bool{true, false} {
		t.Run(fmt.Sprintf("agree=%v", agree), func(t *testing.T) {
			cfg := simConfig()
			cfg.StopAt = 10
			ckpt, newer := referenceState(cfg, 5), referenceState(cfg, 7)
			c := newSimCluster(t, cfg)
			c.m = NewMachine(cfg, ckpt.pos, ckpt.digest, simCoordAddr)
			c.own, c.expect = ckpt, ckpt.pos
			w1 := c.attachWith("w1", newer)
			other := newer
			if !agree {
				other = referenceState(cfg, 6) // missed the last commit
			}
			w2 := c.attachWith("w2", other)
			c.start()
			c.quiesce()
			wantEq(t, "phase", c.m.Phase(), Holding)
			wantEq(t, "w1's state", w1.state, referenceState(cfg, 10))
			wantEq(t, "w2's state", w2.state, referenceState(cfg, 10))
			wantFetches := 0
			if !agree {
				wantFetches = 1 // both roll back to the checkpoint
			}
			wantEq(t, "w1's fetches", len(fetches(w1)), wantFetches)
			wantEq(t, "w2's fetches", len(fetches(w2)), wantFetches)
		})
	}
}
