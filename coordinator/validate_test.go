package coordinator

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// w2Late sets up generation 2 (w1, w2, w3; w4 has left) right after the
// commit of the step that ends epoch 0: w2 is paused, and its evaluation
// and its report of step 7 wait.
func w2Late(t *testing.T) *simCluster {
	t.Helper()
	c := newSimCluster(t, simConfig(), "w1", "w2", "w3", "w4")
	c.start()
	c.runUntilNext(5)
	c.detach("w4")
	c.runUntilNext(7)
	c.pause("w2")
	c.quiesce()
	wantEq(t, "generation", c.m.Generation(), 2)
	wantEq(t, "evaluations in", len(c.m.evals), 2)
	wantEq(t, "reports in", len(c.m.reports), 2)
	return c
}

// Each case is a finding of the review that the edge checks fix: before
// them, a NaN sum_ll was kept (and later crashed the checkpoint encoder), a
// NaN all-reduce time poisoned the status, a NaN committed sum_ll stalled
// the run for the step timeout, and an out-of-range shard or position was
// taken on the worker's word.
func TestMachineRefusesInvalidMessages(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	report := func(mod func(r *nicepb.Report)) func(c *simCluster) Output {
		return func(c *simCluster) Output {
			r := &nicepb.Report{Generation: 2, Step: 7, Lo: 3, Hi: 6, GradDigest: 7, SumLl: -10, ComputeSeconds: 0.1, AllreduceSeconds: 0.1}
			mod(r)
			return c.m.Report(c.now, "w2", r)
		}
	}
	eval := func(mod func(e *nicepb.EvalReport)) func(c *simCluster) Output {
		return func(c *simCluster) Output {
			e := &nicepb.EvalReport{Generation: 2, Epoch: 1, Lo: 7, Hi: 14, SumLl: -3}
			mod(e)
			return c.m.Eval(c.now, "w2", e)
		}
	}
	cases := []struct {
		name, field string
		send        func(c *simCluster) Output
	}{
		{"report: sum_ll NaN", "sum_ll", report(func(r *nicepb.Report) { r.SumLl = nan })},
		{"report: sum_ll infinite", "sum_ll", report(func(r *nicepb.Report) { r.SumLl = -inf })},
		{"report: allreduce_seconds NaN", "allreduce_seconds", report(func(r *nicepb.Report) { r.AllreduceSeconds = nan })},
		{"report: compute_seconds negative", "compute_seconds", report(func(r *nicepb.Report) { r.ComputeSeconds = -1 })},
		{"report: commit_wait_seconds infinite", "commit_wait_seconds", report(func(r *nicepb.Report) { r.CommitWaitSeconds = inf })},
		{"report: update_seconds negative", "update_seconds", report(func(r *nicepb.Report) { r.UpdateSeconds = -0.5 })},
		{"report: shard past the batch", "lo/hi", report(func(r *nicepb.Report) { r.Hi = 1 << 30 })},
		{"report: shard reversed", "lo/hi", report(func(r *nicepb.Report) { r.Lo, r.Hi = 6, 3 })},
		{"evaluation: sum_ll NaN", "sum_ll", eval(func(e *nicepb.EvalReport) { e.SumLl = nan })},
		{"evaluation: shard negative", "lo/hi", eval(func(e *nicepb.EvalReport) { e.Lo = -5 })},
		{"leave: position from nowhere", "position", func(c *simCluster) Output {
			return c.m.Leave(c.now, "w2", "bye", train.Position{Step: 1 << 40, Epoch: 3, StepInEpoch: 2}, 0)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := w2Late(t)
			out := tc.send(c)
			c.apply(out)
			st := c.m.Stats()
			wantEq(t, "refused as invalid", st.Refused.Invalid, 1)
			if !strings.Contains(st.LastRefused, "worker w2") || !strings.Contains(st.LastRefused, "field "+tc.field) {
				t.Errorf("refusal %q does not name the sender and field %s", st.LastRefused, tc.field)
			}
			if len(out.Disconnect) != 1 || out.Disconnect[0] != "w2" {
				t.Errorf("disconnect %v, want [w2]", out.Disconnect)
			}
			// No wait for a timeout: the generation is redone without w2 at once.
			wantEq(t, "generation", c.m.Generation(), 3)
			wantEq(t, "ring", strings.Join(c.m.Ring(), ","), "w1,w3")
			c.quiesce()
			c.checkFinished()
			for _, sc := range c.scores {
				if math.IsNaN(sc.TestLl) || math.IsInf(sc.TestLl, 0) {
					t.Errorf("epoch %d scored %v", sc.Epoch, sc.TestLl)
				}
			}
		})
	}
}

// Before: Report{non_finite} from any session, even a stale one or a
// stranger, stopped training. Now only the current generation's verdict on
// the step in flight holds the run, and only once every member reported.
func TestMachineNonFiniteStopsOnlyFromTheGeneration(t *testing.T) {
	nonFinite := func(gen uint64, step int64) *nicepb.Report {
		return &nicepb.Report{Generation: gen, Step: step, NonFinite: true, Lo: 3, Hi: 6, SumLl: math.NaN()}
	}
	for _, tc := range []struct {
		name, from string
		gen        uint64
		step       int64
	}{
		{"a stranger", "x", 2, 7},
		{"a worker gone", "w4", 2, 7},
		{"an older generation", "w2", 1, 7},
		{"an earlier step", "w2", 2, 6},
	} {
		t.Run("ignored from "+tc.name, func(t *testing.T) {
			c := w2Late(t)
			c.apply(c.m.Report(c.now, tc.from, nonFinite(tc.gen, tc.step)))
			wantEq(t, "phase", c.m.Phase(), Running)
			wantEq(t, "non-finite steps", c.m.Stats().NonFinite, 0)
			c.resume("w2")
			c.quiesce()
			c.checkFinished()
		})
	}
	t.Run("holds when a member reports it for the step in flight", func(t *testing.T) {
		c := w2Late(t)
		w2 := c.workers["w2"]
		w2.outbox = slices.DeleteFunc(w2.outbox, func(m *nicepb.WorkerMessage) bool { return m.GetReport() != nil }) // replaced:
		c.apply(c.m.Report(c.now, "w2", nonFinite(2, 7)))
		wantEq(t, "phase", c.m.Phase(), Holding)
		wantEq(t, "next (the step is not applied)", c.m.Next().Step, 7)
		wantEq(t, "non-finite steps", c.m.Stats().NonFinite, 1)
		c.resume("w2")
		c.quiesce()
		wantEq(t, "next after the rest of w2's messages", c.m.Next().Step, 7)
		if !c.m.View().Stopped {
			t.Errorf("the run is not stopped")
		}
	})
}

// Before: Attach replaced an attached id whatever its incarnation, so two
// workers started with the same id evicted each other forever.
func TestMachineRefusesAnOlderProcessUnderAnAttachedID(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2")
	c.start()
	c.runUntilNext(3)
	gen := c.m.Generation()
	w1 := c.workers["w1"]
	// An older process (a lower incarnation) with w1's id attaches.
	out, err := c.m.Attach(c.now, "w1", "elsewhere:7100", w1.incarnation-1, 0)
	if !errors.Is(err, ErrIdentityTaken) || !errors.Is(err, ErrRefused) {
		t.Fatalf("attach of an older process under w1: err %v, want ErrIdentityTaken", err)
	}
	c.apply(out)
	wantEq(t, "generation", c.m.Generation(), gen)
	wantEq(t, "w1's address", c.m.Addr("w1"), w1.addr)
	wantEq(t, "refused (identity)", c.m.Stats().Refused.Identity, 1)
	// The same process reconnecting, or a newer one, is taken.
	if _, err := c.m.Attach(c.now, "w1", w1.addr, w1.incarnation, 0); err != nil {
		t.Fatalf("the same incarnation reconnecting: %v", err)
	}
}

func TestCheckHello(t *testing.T) {
	good := func() *nicepb.Hello {
		return &nicepb.Hello{WorkerId: "worker-1.a_b:c", Addr: "10.0.0.7:7100", Incarnation: 1}
	}
	if err := CheckHello(good()); err != nil {
		t.Fatalf("a good hello: %v", err)
	}
	for _, tc := range []struct {
		name, field string
		mod         func(h *nicepb.Hello)
	}{
		{"empty id", "worker_id", func(h *nicepb.Hello) { h.WorkerId = "" }},
		{"long id", "worker_id", func(h *nicepb.Hello) { h.WorkerId = strings.Repeat("a", 129) }},
		{"id with a newline", "worker_id", func(h *nicepb.Hello) { h.WorkerId = "w1\nlevel=ERROR" }},
		{"id with a slash", "worker_id", func(h *nicepb.Hello) { h.WorkerId = "../etc" }},
		{"no port", "addr", func(h *nicepb.Hello) { h.Addr = "10.0.0.7" }},
		{"port 0", "addr", func(h *nicepb.Hello) { h.Addr = "10.0.0.7:0" }},
		{"port too big", "addr", func(h *nicepb.Hello) { h.Addr = "h:99999999999999999999" }},
		{"control character", "addr", func(h *nicepb.Hello) { h.Addr = "a\x00b:7100" }},
		{"zero incarnation", "incarnation", func(h *nicepb.Hello) { h.Incarnation = 0 }},
	} {
		h := good()
		tc.mod(h)
		err := CheckHello(h)
		if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "field "+tc.field) {
			t.Errorf("%s: err %v, want a refusal naming field %s", tc.name, err, tc.field)
		}
	}
	if err := CheckHello(nil); err == nil {
		t.Errorf("no hello: accepted")
	}
}

// Before: a checkpoint was stored on rank 0's word (only its position was
// checked). Now the members' digests of each snapshot must agree, and the
// server stores a fetched state only if it is the agreed one.
func TestMachineAgreesOnSnapshotDigests(t *testing.T) {
	t.Run("every member names the same digest", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(int64(c.spe)) // the epoch end takes a snapshot
		c.quiesce()
		want := referenceState(c.cfg, int64(c.spe))
		if !slices.Contains(c.m.View().Agreed, Agreement{Position: want.pos, Digest: want.digest}) {
			t.Errorf("agreements %v lack the snapshot at step %d with digest %016x", c.m.View().Agreed, want.pos.Step, want.digest)
		}
	})
	t.Run("a member names another digest", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2", "w3")
		c.start()
		c.runUntilNext(int64(c.spe))
		pos := c.m.snapPos
		c.pause("w1", "w2", "w3")
		gen := c.m.Generation()
		for _, id := range []string{"w1", "w2"} {
			c.apply(c.m.Snapshotted(c.now, id, &nicepb.Snapshotted{Generation: gen, Position: statexferPB(pos), StateDigest: 42}))
		}
		c.apply(c.m.Snapshotted(c.now, "w3", &nicepb.Snapshotted{Generation: gen, Position: statexferPB(pos), StateDigest: 43}))
		wantEq(t, "digest mismatches", c.m.Stats().DigestMismatch, 1)
		wantEq(t, "generation (the replicas settle again)", c.m.Generation(), gen+1)
		for _, a := range c.m.View().Agreed {
			if a.Position == pos && (a.Digest == 42 || a.Digest == 43) {
				t.Errorf("a disputed digest was agreed: %+v", a)
			}
		}
	})
	t.Run("from a stranger or of another step", func(t *testing.T) {
		c := newSimCluster(t, simConfig(), "w1", "w2")
		c.start()
		c.runUntilNext(int64(c.spe))
		gen := c.m.Generation()
		c.apply(c.m.Snapshotted(c.now, "x", &nicepb.Snapshotted{Generation: gen, Position: statexferPB(c.m.snapPos), StateDigest: 1}))
		c.apply(c.m.Snapshotted(c.now, "w1", &nicepb.Snapshotted{Generation: gen, Position: &nicepb.Position{Step: 2, StepInEpoch: 2}, StateDigest: 1}))
		st := c.m.Stats()
		wantEq(t, "refused (non-member)", st.Refused.NonMember, 1)
		wantEq(t, "refused (stale)", st.Refused.Stale, 1)
		c.quiesce()
		c.checkFinished()
	})
}

func statexferPB(p train.Position) *nicepb.Position {
	return &nicepb.Position{Step: p.Step, Epoch: int32(p.Epoch), StepInEpoch: int32(p.StepInEpoch)}
}

func TestServerStoresOnlyAgreedStates(t *testing.T) {
	pos := train.Position{Step: 7, Epoch: 1}
	newServer := func(agreed ...Agreement) *Server {
		return &Server{agreed: agreed, agreedChanged: make(chan struct{}), loopDone: make(chan struct{})}
	}
	if err := newServer(Agreement{pos, 5}).awaitAgreement(pos, 5); err != nil {
		t.Errorf("the agreed state: %v", err)
	}
	if err := newServer(Agreement{pos, 5}).awaitAgreement(pos, 6); err == nil || !strings.Contains(err.Error(), "agreed on") {
		t.Errorf("a state with another digest: err %v, want a refusal", err)
	}
	if err := newServer(Agreement{train.Position{Step: 9, Epoch: 1, StepInEpoch: 2}, 5}).awaitAgreement(pos, 5); err == nil {
		t.Errorf("a state older than every agreement: accepted")
	}
	// The agreement comes after the fetch: the state waits for it.
	s := newServer(Agreement{train.Position{Step: 3, StepInEpoch: 3}, 1})
	done := make(chan error, 1)
	go func() { done <- s.awaitAgreement(pos, 5) }()
	s.mu.Lock()
	s.agreed = append(s.agreed, Agreement{pos, 5})
	close(s.agreedChanged)
	s.agreedChanged = make(chan struct{})
	s.mu.Unlock()
	if err := <-done; err != nil {
		t.Errorf("an agreement that came later: %v", err)
	}
	// The coordinator stops first: refused, not stuck.
	s = newServer()
	go func() { done <- s.awaitAgreement(pos, 5) }()
	close(s.loopDone)
	if err := <-done; err == nil {
		t.Errorf("no agreement before the stop: accepted")
	}
}

// The compose down case: every member asks to leave mid-run. The commit
// that holds for them ends their generation (no one is left to form
// another), yet their snapshot digests must still make it agreed, so that
// its checkpoint is stored and they are let go. (Before the fix the digests
// were refused as stale, the checkpoint was refused, the leavers timed out,
// and the steps since the last checkpoint were lost.)
func TestMachineEveryMemberLeavesAndTheHoldIsStored(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2")
	c.start()
	c.runUntilNext(3)
	for _, id := range []string{"w1", "w2"} {
		c.apply(c.m.Leave(c.now, id, "told to stop", c.m.Next(), 0))
	}
	c.run(func() bool { return c.m.Next().Step > 3 })
	c.run(func() bool { return c.own.pos.Step == 4 })
	wantEq(t, "checkpoint", c.own.pos.Step, 4)
	wantEq(t, "dismissed", c.dismissedIDs(), "w1,w2")
}

// dismissedIDs lists, sorted, the workers the machine sent Dismiss.
func (c *simCluster) dismissedIDs() string {
	var ids []string
	for _, out := range c.outs {
		for _, s := range out.Sends {
			if s.Msg.GetDismiss() != nil {
				ids = append(ids, s.To)
			}
		}
	}
	slices.Sort(ids)
	return strings.Join(ids, ",")
}

// leaveAll has every worker ask to leave, naming its state and digest as a
// worker process does.
func (c *simCluster) leaveAll() {
	for _, id := range c.ids() {
		w := c.workers[id]
		c.apply(c.m.Leave(c.now, id, "told to stop", w.state.pos, w.state.digest))
	}
}

// The compose down case just after the ring broke (in the seeded campaign,
// a member was cut off the network a moment before): no commit can hold for
// the leavers, and no generation forms after them to agree on the state
// they hold. Their Leaves' digests are that agreement: the state is stored
// and they are let go. (Before, its checkpoint waited for an agreement that
// never came, the workers gave up after their --leave-timeout, and the steps
// since the last checkpoint were committed again: campaign seed 1782178802.)
func TestMachineEveryMemberLeavesAfterTheRingBroke(t *testing.T) {
	c := newSimCluster(t, simConfig(), "w1", "w2")
	c.start()
	c.runUntilNext(3)
	c.breakRing("w1", "w2")
	c.quiesce()
	at := c.workers["w1"].state.pos
	wantEq(t, "the leavers' step", at, c.m.Next())
	c.leaveAll()
	c.quiesce()
	wantEq(t, "dismissed before the ring's grace", c.dismissedIDs(), "")
	c.tick(c.cfg.RingGrace)
	c.quiesce()
	wantEq(t, "checkpoint", c.own.pos, at)
	wantEq(t, "dismissed", c.dismissedIDs(), "w1,w2")
}

// A member stalls mid-step (frozen, or its ring hangs without breaking) as
// every member is told to stop: the commit that would hold for them is not
// coming, and waiting for the step timeout would outlast their
// --leave-timeout. After LeaveStall the step is abandoned, the state they
// hold is stored and they are let go.
func TestMachineLeaversDoNotWaitForAStalledStep(t *testing.T) {
	cfg := simConfig()
	cfg.LeaveStall = 2 * time.Second // below the step timeout
	c := newSimCluster(t, cfg, "w1", "w2")
	c.start()
	c.runUntilNext(3)
	c.pause("w2")
	c.quiesce() // w2's report of step 3 never arrives
	at := c.workers["w1"].state.pos
	c.leaveAll()
	c.quiesce()
	c.tick(cfg.LeaveStall - time.Millisecond)
	c.quiesce()
	wantEq(t, "generation before LeaveStall", c.m.Generation(), 1)
	wantEq(t, "dismissed before LeaveStall", c.dismissedIDs(), "")
	c.tick(time.Millisecond)
	c.quiesce()
	wantEq(t, "checkpoint", c.own.pos, at)
	wantEq(t, "dismissed", c.dismissedIDs(), "w1,w2")
	wantEq(t, "redone", c.m.Stats().Redone, 1)
	c.resume("w2") // its stale report is refused
	c.quiesce()
}
