package coordinator

import (
	"fmt"
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// machineWatch checks the invariants of a Machine after every event, whatever
// the workers sent: the fuzzers' oracle. Unlike simCluster's checks, which
// know what honest workers hold, it assumes nothing of the workers, so it
// checks only what the machine must keep true on its own.
type machineWatch struct {
	t     testing.TB
	m     *Machine
	start train.Position   // the state the machine started from
	asked []train.Position // positions of the snapshots it asked for
	// snaps are the states each worker vouched for by a Snapshotted.
	snaps map[string][]Agreement
	prev  View
	trail []string // the latest events, for the failure message
}

func newMachineWatch(t testing.TB, m *Machine) *machineWatch {
	return &machineWatch{t: t, m: m, start: m.Next(), snaps: map[string][]Agreement{}, prev: m.View()}
}

func (w *machineWatch) fail(format string, args ...any) {
	w.t.Helper()
	w.t.Fatalf("%s\nlatest events:\n\t%s", fmt.Sprintf(format, args...), strings.Join(w.trail, "\n\t"))
}

// note records an event for the failure message.
func (w *machineWatch) note(format string, args ...any) {
	w.trail = append(w.trail, fmt.Sprintf(format, args...))
	if len(w.trail) > 16 {
		w.trail = w.trail[1:]
	}
}

// after checks the machine after an event that returned out.
func (w *machineWatch) after(out Output) {
	w.t.Helper()
	v := w.m.View()
	if v.Generation < w.prev.Generation {
		w.fail("generation went back from %d to %d", w.prev.Generation, v.Generation)
	}
	if v.Generation != w.prev.Generation {
		var planned []string
		for _, s := range out.Sends {
			if p := s.Msg.GetPlan(); p != nil && p.Generation == v.Generation {
				planned = append(planned, s.To)
			}
		}
		if !slices.Equal(planned, v.Ring) {
			w.fail("generation %d planned for %v, its ring is %v", v.Generation, planned, v.Ring)
		}
	}
	for id := range w.snaps {
		if w.m.workers[id] == nil {
			delete(w.snaps, id) // a worker attached again vouches anew
		}
	}
	w.checkRing(v)
	w.checkMembers(v)
	w.checkNext(v, out)
	w.checkFinite(v, out)
	w.checkSnapshot(v, out)
	w.checkAgreed(v)
	w.checkSends(out)
	w.prev = v
}

// catch turns a panic of the machine into a failure that shows the events
// leading to it.
func (w *machineWatch) catch() {
	if p := recover(); p != nil {
		w.fail("the machine panicked: %v\n%s", p, debug.Stack())
	}
}

// checkRing: the ring lists attached members, sorted, each once; a worker
// is a member only in the ring; the phase fits the ring.
func (w *machineWatch) checkRing(v View) {
	w.t.Helper()
	m := w.m
	if !slices.IsSorted(v.Ring) || len(slices.Compact(slices.Clone(v.Ring))) != len(v.Ring) {
		w.fail("ring %v is not sorted or lists a worker twice", v.Ring)
	}
	for _, id := range v.Ring {
		if ws := m.workers[id]; ws == nil || !ws.member {
			w.fail("ring %v lists %s, which is not an attached member", v.Ring, id)
		}
	}
	synced := 0
	for id, ws := range m.workers {
		in := slices.Contains(v.Ring, id)
		if ws.member != in || ws.synced && !in {
			w.fail("worker %s: member %v, synced %v, in the ring %v", id, ws.member, ws.synced, v.Ring)
		}
		if ws.synced {
			synced++
		}
	}
	switch v.Phase {
	case Idle:
		if len(v.Ring) != 0 {
			w.fail("idle with ring %v", v.Ring)
		}
	case Preparing:
		if len(v.Ring) == 0 || synced != 0 {
			w.fail("preparing ring %v with %d members synced", v.Ring, synced)
		}
	case Running:
		if len(v.Ring) == 0 || synced != len(v.Ring) {
			w.fail("running ring %v with %d members synced", v.Ring, synced)
		}
	}
}

// checkMembers: the view agrees with the ring, and a worker is shown
// training only when it is a synced member in a phase that trains or holds.
func (w *machineWatch) checkMembers(v View) {
	w.t.Helper()
	for _, mv := range v.Members {
		ws := w.m.workers[mv.ID]
		if ws == nil || mv.Addr != ws.addr {
			w.fail("member view %+v of a worker not attached from there", mv)
		}
		if mv.Rank >= 0 && (mv.Rank >= len(v.Ring) || v.Ring[mv.Rank] != mv.ID) {
			w.fail("%s has rank %d in ring %v", mv.ID, mv.Rank, v.Ring)
		}
		switch mv.State {
		case Training:
			if !ws.synced || mv.Rank < 0 || ws.leaving || (v.Phase != Running && v.Phase != Holding && v.Phase != Finished) {
				w.fail("%s shown training (rank %d, synced %v) in phase %s", mv.ID, mv.Rank, ws.synced, v.Phase)
			}
		case Waiting:
			if mv.Rank != -1 || ws.member {
				w.fail("%s shown waiting with rank %d", mv.ID, mv.Rank)
			}
		case Leaving:
			if !ws.leaving {
				w.fail("%s shown leaving, it did not ask to", mv.ID)
			}
		}
	}
}

// canonical reports why pos is not a position of this run, or "".
func (w *machineWatch) canonical(pos train.Position) string {
	spe, epochs := w.m.spe, w.m.cfg.Epochs
	switch {
	case pos.Step < 0 || pos.Epoch < 0 || pos.StepInEpoch < 0 || pos.StepInEpoch >= spe:
		return "outside the run"
	case pos.Step != int64(pos.Epoch)*int64(spe)+int64(pos.StepInEpoch):
		return "inconsistent"
	case pos.Epoch > epochs || pos.Epoch == epochs && pos.StepInEpoch != 0:
		return "past the last epoch"
	}
	return ""
}

// checkNext: the next step moves only by one committed step, whose shards
// partition its batch, back (or on) to a checkpoint the machine itself
// asked for, or, before this machine committed anything, to the state every
// member said it holds (a restarted coordinator going on from its workers).
func (w *machineWatch) checkNext(v View, out Output) {
	w.t.Helper()
	m := w.m
	from := w.prev.Next
	committed := w.prev.Stats.Committed
	switch c := out.Committed; {
	case c != nil:
		committed++
		if c.Position != from || v.Next != from.Next(m.spe) {
			w.fail("commit of %+v moved next from %+v to %+v", c.Position, from, v.Next)
		}
		lo, hi := train.BatchBounds(m.cfg.TrainN, m.cfg.Batch, c.Position.StepInEpoch)
		if c.Batch != hi-lo {
			w.fail("step %d committed with batch %d, want %d", c.Position.Step, c.Batch, hi-lo)
		}
		if err := checkPartition(c.Shards, c.Batch); err != nil {
			w.fail("step %d: %v", c.Position.Step, err)
		}
		var by []string
		for _, s := range c.Shards {
			by = append(by, s.Worker)
		}
		if !slices.Equal(by, w.prev.Ring) {
			w.fail("step %d committed with shards of %v, the ring was %v", c.Position.Step, by, w.prev.Ring)
		}
	case v.Next == from:
	case v.Next == m.coordPos && (v.Next == w.start || slices.Contains(w.asked, v.Next)):
		// Back to the machine's own checkpoint (one it asked for, of a
		// state the replicas agreed on: see checkAgreed): no member held
		// the state.
	case v.Stats.Committed == 0 && v.Next.Step > from.Step && w.everyMemberReady(v.Next):
	default:
		w.fail("next moved from %+v to %+v without a commit (own checkpoint %+v, asked %v)", from, v.Next, m.coordPos, w.asked)
	}
	if v.Stats.Committed != committed {
		w.fail("%d steps committed, the outputs show %d", v.Stats.Committed, committed)
	}
	if why := w.canonical(v.Next); why != "" {
		w.fail("next %+v is %s (%d steps per epoch, %d epochs)", v.Next, why, m.spe, m.cfg.Epochs)
	}
}

// everyMemberReady says whether every member's Ready names the state at pos.
func (w *machineWatch) everyMemberReady(pos train.Position) bool {
	for _, id := range w.m.ring {
		r := w.m.workers[id].ready
		if r == nil || !r.HasState || statexfer.FromPB(r.Position) != pos {
			return false
		}
	}
	return len(w.m.ring) > 0
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// checkFinite: every figure the machine hands out is a finite number (the
// server encodes them into status, ledger and checkpoints).
func (w *machineWatch) checkFinite(v View, out Output) {
	w.t.Helper()
	figures := map[string]float64{
		"stats last step seconds": v.Stats.LastStepSeconds,
		"stats last all-reduce":   v.Stats.LastAllreduce,
		"stats last train NLL":    v.Stats.LastTrainNLL,
	}
	if c := out.Committed; c != nil {
		figures["commit sum_ll"] = c.SumLL
		figures["commit compute seconds"] = c.Compute
		figures["commit all-reduce seconds"] = c.Allreduce
	}
	if sc := out.Scored; sc != nil {
		figures["score test_ll"] = sc.TestLl
		figures["score bits per dim"] = sc.BitsPerDim
		figures["score train NLL"] = sc.TrainNll
	}
	for _, s := range out.Sends {
		if c := s.Msg.GetCommit(); c != nil {
			figures["commit message sum_ll"] = c.SumLl
		}
	}
	for name, f := range figures {
		if !isFinite(f) {
			w.fail("%s is %v", name, f)
		}
	}
}

// checkSnapshot: a snapshot is asked of an attached worker, at a position of
// the run; a commit's snapshot is the state it reaches, from a member.
func (w *machineWatch) checkSnapshot(v View, out Output) {
	w.t.Helper()
	r := out.Snapshot
	if r == nil {
		return
	}
	var from []string
	for id, ws := range w.m.workers {
		if ws.addr == r.Addr {
			from = append(from, id)
		}
	}
	if len(from) == 0 {
		w.fail("snapshot %+v asked of %s, where no attached worker is", r.Position, r.Addr)
	}
	if why := w.canonical(r.Position); why != "" {
		w.fail("snapshot asked at %+v, which is %s", r.Position, why)
	}
	if !r.Live {
		member := false
		for _, id := range from {
			member = member || slices.Contains(w.prev.Ring, id) || slices.Contains(v.Ring, id)
		}
		if !member || r.Position != v.Next {
			w.fail("commit snapshot %+v from %v (ring %v, next %+v)", r.Position, from, w.prev.Ring, v.Next)
		}
	}
	w.asked = append(w.asked, r.Position)
}

// checkAgreed: a state is listed as agreed (and may so be stored as a
// checkpoint) only when every member of the generation vouched for its
// digest, by its Ready or by its Snapshotted, at a position of the run.
func (w *machineWatch) checkAgreed(v View) {
	w.t.Helper()
	for _, a := range v.Agreed {
		if why := w.canonical(a.Position); why != "" {
			w.fail("agreed on a state at %+v, which is %s", a.Position, why)
		}
		if slices.Contains(w.prev.Agreed, a) || a.Position == w.start && len(w.prev.Agreed) == 0 {
			continue
		}
		// Vouched for by every member of the generation, by Ready or
		// Snapshotted; or, for a snapshot, by every member still attached
		// of the generation that asked for it, which its own commit may
		// have ended (a hold for leavers).
		vouched := func(members []string) string {
			for _, id := range members {
				r := w.m.workers[id].ready
				byReady := r != nil && r.HasState && statexfer.FromPB(r.Position) == a.Position && r.StateDigest == a.Digest
				if !byReady && !slices.Contains(w.snaps[id], a) {
					return fmt.Sprintf("member %s did not vouch for it (ready %v, snapshot %+v)", id, r, w.snaps[id])
				}
			}
			return ""
		}
		why := vouched(v.Ring)
		if why != "" && a.Position == w.m.snapPos && len(w.m.snapRing) > 0 && vouched(w.m.snapRing) == "" {
			why = ""
		}
		if why != "" {
			w.fail("agreed on %+v, which %s; ring %v", a, why, v.Ring)
		}
	}
}

// checkSends: messages go to attached workers; the workers dropped are gone.
func (w *machineWatch) checkSends(out Output) {
	w.t.Helper()
	for _, s := range out.Sends {
		if w.m.workers[s.To] == nil {
			w.fail("%T sent to %s, which is not attached", s.Msg.Kind, s.To)
		}
	}
	for _, id := range out.Disconnect {
		if w.m.workers[id] != nil {
			w.fail("disconnect of %s, which is still attached", id)
		}
	}
}

// ignored checks that a message the machine must ignore (from a worker not
// attached, or of another generation) changed nothing that matters.
func (w *machineWatch) ignored(what string, before View, stop, snap bool, out Output) {
	w.t.Helper()
	v := w.m.View()
	if len(out.Sends) > 0 || out.Snapshot != nil || out.Committed != nil || out.Scored != nil || len(out.Disconnect) > 0 ||
		v.Phase != before.Phase || v.Generation != before.Generation || v.Next != before.Next || !slices.Equal(v.Ring, before.Ring) ||
		w.m.stopWanted != stop || w.m.snapshotWanted != snap {
		w.fail("%s acted upon: phase %s→%s, generation %d→%d, stop %v→%v, output %+v", what, before.Phase, v.Phase,
			before.Generation, v.Generation, stop, w.m.stopWanted, out)
	}
}

// deliver hands one message of worker id's session to the machine as the
// server does, and checks the invariants after it. A Hello opens a new
// session (the server attaches it, if it passes CheckHello).
func (w *machineWatch) deliver(now nowFunc, id string, msg *nicepb.WorkerMessage) {
	w.t.Helper()
	m := w.m
	var gen uint64
	switch k := msg.Kind.(type) {
	case *nicepb.WorkerMessage_Ready:
		gen = k.Ready.Generation
	case *nicepb.WorkerMessage_Report:
		gen = k.Report.Generation
	case *nicepb.WorkerMessage_Eval:
		gen = k.Eval.Generation
	case *nicepb.WorkerMessage_RingFailure:
		gen = k.RingFailure.Generation
	case *nicepb.WorkerMessage_Snapshotted:
		gen = k.Snapshotted.Generation
	}
	before, stop, snap := m.View(), m.stopWanted, m.snapshotWanted
	foreign := m.workers[id] == nil || gen != m.gen
	var out Output
	switch k := msg.Kind.(type) {
	case *nicepb.WorkerMessage_Hello:
		h := k.Hello
		if CheckHello(h) != nil {
			return // the server ends such a session before the machine hears of it
		}
		w.note("hello %s from %s, incarnation %d, last generation %d", h.WorkerId, h.Addr, h.Incarnation, h.LastGeneration)
		out, err := m.Attach(now(), h.WorkerId, h.Addr, h.Incarnation, h.LastGeneration)
		if err != nil {
			w.ignored("a refused hello", before, stop, snap, out)
		}
		w.after(out)
		return
	case *nicepb.WorkerMessage_Ready:
		w.note("%s: ready %v", id, k.Ready)
		out = m.Ready(now(), id, k.Ready)
	case *nicepb.WorkerMessage_Report:
		w.note("%s: report %v", id, k.Report)
		out = m.Report(now(), id, k.Report)
	case *nicepb.WorkerMessage_Eval:
		w.note("%s: eval %v", id, k.Eval)
		out = m.Eval(now(), id, k.Eval)
	case *nicepb.WorkerMessage_RingFailure:
		w.note("%s: ring failure %v", id, k.RingFailure)
		out = m.RingFailure(now(), id, k.RingFailure)
	case *nicepb.WorkerMessage_Snapshotted:
		w.note("%s: snapshotted %v", id, k.Snapshotted)
		// A snapshot's digest belongs to the generation that asked for
		// the snapshot, which a later one may have replaced (a member
		// dropped after the commit): the machine takes it then too.
		foreign = m.workers[id] == nil || gen != m.gen && gen != m.snapGen
		if !foreign {
			w.snaps[id] = append(w.snaps[id], Agreement{Position: statexfer.FromPB(k.Snapshotted.Position), Digest: k.Snapshotted.StateDigest})
		}
		out = m.Snapshotted(now(), id, k.Snapshotted)
	case *nicepb.WorkerMessage_Leave:
		w.note("%s: leave %v", id, k.Leave)
		foreign = m.workers[id] == nil
		out = m.Leave(now(), id, k.Leave.Reason, statexfer.FromPB(k.Leave.Position), k.Leave.StateDigest)
	default:
		return // heartbeats and unknown kinds: the server reads nothing else
	}
	if foreign {
		w.ignored(fmt.Sprintf("a message from %s of generation %d (machine at %d)", id, gen, before.Generation), before, stop, snap, out)
	}
	w.after(out)
}

// nowFunc gives the time of the event being delivered.
type nowFunc = func() time.Time
