package worker

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// Scenarios of the worker's machine alone; internal/sim drives it together
// with the coordinator's under seeded faults.

var t0 = time.Unix(1_800_000_000, 0)

func plan(gen uint64, rank int32, ids ...string) *nicepb.CoordinatorMessage {
	p := &nicepb.Plan{Generation: gen, Rank: rank}
	for _, id := range ids {
		p.Ring = append(p.Ring, &nicepb.RingMember{Id: id, Addr: id + ":7100"})
	}
	return &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Plan{Plan: p}}
}

func start(gen uint64, pos train.Position, digest uint64) *nicepb.CoordinatorMessage {
	return &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Start{Start: &nicepb.Start{
		Generation: gen, Position: statexfer.ToPB(pos), StateDigest: digest}}}
}

func commit(gen uint64, step int64, hold bool) *nicepb.CoordinatorMessage {
	return &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Commit{Commit: &nicepb.Commit{
		Generation: gen, Step: step, Batch: 8, Hold: hold}}}
}

// started returns a machine attached, planned into gen 1 as rank 0 of 2,
// holding step 0 with digest 7, started and computing step 0.
func started(t *testing.T) *Machine {
	t.Helper()
	m := NewMachine(MachineConfig{DigestEvery: 1})
	m.Attached(t0, 3)
	a := m.Message(t0, plan(1, 0, "a", "b"))
	if a.Prepare == nil || a.Prepare.Generation != 1 {
		t.Fatalf("a plan orders %+v, want a prepare of generation 1", a)
	}
	a = m.Prepared(t0, 1, train.Position{}, 7, nil)
	if len(a.Send) != 1 || a.Send[0].GetReady().GetStateDigest() != 7 {
		t.Fatalf("after preparing it sends %v, want a Ready with digest 7", a.Send)
	}
	a = m.Message(t0, start(1, train.Position{}, 7))
	if a.Compute == nil || a.Compute.Position.Step != 0 || a.Compute.Rank != 0 || a.Compute.Size != 2 {
		t.Fatalf("a start orders %+v, want the gradient of step 0 as rank 0 of 2", a)
	}
	return m
}

func TestMachineStepCycle(t *testing.T) {
	m := started(t)
	a := m.Computed(t0, ComputeResult{Generation: 1, Step: 0, GradDigest: 42, Lo: 0, Hi: 4})
	if r := a.Send[0].GetReport(); r == nil || r.Step != 0 || r.GradDigest != 42 || r.Hi != 4 {
		t.Fatalf("after the all-reduce it sends %v, want the report of step 0", a.Send)
	}
	if a.Compute != nil || a.Apply != nil {
		t.Fatalf("before the commit it ordered %+v", a)
	}
	a = m.Message(t0, commit(1, 0, false))
	if a.Apply == nil || a.Apply.Commit.Step != 0 {
		t.Fatalf("a commit orders %+v, want the update of step 0", a)
	}
	// The same commit again (it cannot come twice on one session, but a bug
	// must not apply a step twice).
	if a := m.Message(t0, commit(1, 0, false)); a.Apply != nil {
		t.Fatal("a second commit of step 0 was applied")
	}
	a = m.Applied(t0, 1, train.Position{Step: 1, StepInEpoch: 1}, 0, nil)
	if a.Compute == nil || a.Compute.Position.Step != 1 {
		t.Fatalf("after applying it orders %+v, want step 1", a)
	}
	if got := m.Stats().Applied; got != 1 {
		t.Fatalf("applied %d steps, want 1", got)
	}
}

// A report carries the previous step's commit wait (report to commit) and
// update (commit to applied); the first report has none.
func TestMachineReportsStepTimes(t *testing.T) {
	m := started(t)
	a := m.Computed(t0, ComputeResult{Generation: 1, Step: 0, Lo: 0, Hi: 4})
	if r := a.Send[0].GetReport(); r.CommitWaitSeconds != 0 || r.UpdateSeconds != 0 {
		t.Fatalf("the first report carries commit wait %g s, update %g s, want none", r.CommitWaitSeconds, r.UpdateSeconds)
	}
	m.Message(t0.Add(250*time.Millisecond), commit(1, 0, false))
	m.Applied(t0.Add(300*time.Millisecond), 1, train.Position{Step: 1, StepInEpoch: 1}, 0, nil)
	a = m.Computed(t0.Add(2*time.Second), ComputeResult{Generation: 1, Step: 1, Lo: 0, Hi: 4})
	r := a.Send[0].GetReport()
	if r == nil || r.Step != 1 {
		t.Fatalf("after step 1 it sends %v, want its report", a.Send)
	}
	if math.Abs(r.CommitWaitSeconds-0.25) > 1e-9 || math.Abs(r.UpdateSeconds-0.05) > 1e-9 {
		t.Fatalf("the report of step 1 carries commit wait %g s, update %g s; want step 0's 0.25 s and 0.05 s", r.CommitWaitSeconds, r.UpdateSeconds)
	}
}

// A commit that arrives before a newer plan is applied first: the
// coordinator sent it first and plans assuming it.
func TestMachineCommitBeforePlan(t *testing.T) {
	m := started(t)
	m.Computed(t0, ComputeResult{Generation: 1, Step: 0})
	a := m.Message(t0, commit(1, 0, false))
	if a.Apply == nil {
		t.Fatal("commit not applied")
	}
	a = m.Message(t0, plan(2, 1, "a", "b", "c"))
	if a.Prepare != nil {
		t.Fatal("the new plan was prepared while the update was in flight")
	}
	a = m.Applied(t0, 1, train.Position{Step: 1, StepInEpoch: 1}, 0, nil)
	if a.Prepare == nil || a.Prepare.Generation != 2 || a.Compute != nil {
		t.Fatalf("after the update it orders %+v, want the prepare of generation 2 and no step", a)
	}
	a = m.Prepared(t0, 2, train.Position{Step: 1, StepInEpoch: 1}, 9, nil)
	if r := a.Send[0].GetReady(); r == nil || r.Generation != 2 || r.Position.Step != 1 {
		t.Fatalf("it reports %v, want Ready of generation 2 at step 1", a.Send)
	}
}

// A plan while computing cancels the computation, whose result is dropped.
func TestMachinePlanCancelsStep(t *testing.T) {
	m := started(t)
	a := m.Message(t0, plan(2, 0, "a"))
	if !a.Cancel || a.Prepare != nil {
		t.Fatalf("a plan during a step orders %+v, want a cancel and no prepare yet", a)
	}
	a = m.Computed(t0, ComputeResult{Generation: 1, Step: 0, Err: errors.New("cancelled")})
	if len(a.Send) != 0 {
		t.Fatalf("the cancelled step sent %v", a.Send)
	}
	if a.Prepare == nil || a.Prepare.Generation != 2 {
		t.Fatalf("after the cancel it orders %+v, want the prepare of generation 2", a)
	}
	// Stale messages of generation 1 change nothing.
	if a := m.Message(t0, plan(1, 0, "a")); a.Prepare != nil || a.Cancel {
		t.Fatal("a stale plan was acted on")
	}
	if a := m.Message(t0, commit(1, 0, false)); a.Apply != nil {
		t.Fatal("a commit of an older generation was applied")
	}
}

// A Start naming another state than the worker holds is refused: it does
// not train, and has the generation redone.
func TestMachineRefusesStartWithAnotherState(t *testing.T) {
	m := NewMachine(MachineConfig{})
	m.Attached(t0, 3)
	m.Message(t0, plan(1, 0, "a", "b"))
	m.Prepared(t0, 1, train.Position{}, 7, nil)
	a := m.Message(t0, start(1, train.Position{Step: 14, StepInEpoch: 14}, 99))
	if a.Compute != nil {
		t.Fatal("it trains from a state it does not hold")
	}
	if f := a.Send[0].GetRingFailure(); f == nil || f.Generation != 1 {
		t.Fatalf("it sends %v, want a failure of generation 1", a.Send)
	}
	if m.Training() {
		t.Fatal("it counts itself as training")
	}
}

// A failed fetch is retried after a backoff while the generation stands.
func TestMachineFetchRetry(t *testing.T) {
	m := NewMachine(MachineConfig{FetchRetryMin: time.Second, FetchRetryMax: 4 * time.Second})
	m.Attached(t0, 3)
	m.Message(t0, plan(1, 1, "a", "b"))
	m.Prepared(t0, 1, train.Position{}, 7, nil)
	f := &nicepb.Fetch{Generation: 1, SourceAddr: "a:7100", Position: &nicepb.Position{Step: 5}, StateDigest: 11}
	a := m.Message(t0, &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Fetch{Fetch: f}})
	if a.Fetch != f {
		t.Fatalf("a fetch orders %+v", a)
	}
	a = m.Fetched(t0, 1, train.Position{}, 0, errors.New("connection refused"))
	if a.Fetch != nil || len(a.Send) != 0 {
		t.Fatalf("a failed fetch ordered %+v at once", a)
	}
	if a := m.Tick(t0.Add(500 * time.Millisecond)); a.Fetch != nil {
		t.Fatal("retried before the backoff")
	}
	if a := m.Tick(t0.Add(time.Second)); a.Fetch != f {
		t.Fatalf("no retry after the backoff: %+v", a)
	}
	a = m.Fetched(t0, 1, train.Position{Step: 5, StepInEpoch: 5}, 11, nil)
	if r := a.Send[0].GetReady(); r == nil || r.StateDigest != 11 || r.Position.Step != 5 {
		t.Fatalf("after the fetch it reports %v, want Ready at step 5 digest 11", a.Send)
	}
}

// Told to stop, it asks to leave with its position and exits only when
// dismissed; with no coordinator attached it exits at once.
func TestMachineLeave(t *testing.T) {
	m := started(t)
	a := m.Stop(t0)
	if l := a.Send[0].GetLeave(); l == nil || l.Position.GetStep() != 0 || a.Exit {
		t.Fatalf("stop sends %v (exit %v), want a Leave at step 0 and no exit", a.Send, a.Exit)
	}
	// It goes on with its step meanwhile.
	a = m.Computed(t0, ComputeResult{Generation: 1, Step: 0})
	if a.Send[0].GetReport() == nil {
		t.Fatal("a leaving worker stopped taking part before being dismissed")
	}
	a = m.Message(t0, &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Dismiss{Dismiss: &nicepb.Dismiss{CheckpointStep: 1}}})
	if !a.Exit || !m.Dismissed() {
		t.Fatal("a dismissed worker does not exit")
	}

	d := NewMachine(MachineConfig{})
	if a := d.Stop(t0); !a.Exit {
		t.Fatal("a worker with no coordinator does not exit when told to stop")
	}
}

// A snapshot's digest goes to the coordinator, which checkpoints the
// snapshot only once every member named the same one.
func TestMachineReportsTheSnapshotDigest(t *testing.T) {
	m := started(t)
	m.Computed(t0, ComputeResult{Generation: 1, Step: 0})
	c := commit(1, 0, false)
	c.GetCommit().Snapshot = true
	if a := m.Message(t0, c); a.Apply == nil {
		t.Fatal("commit not applied")
	}
	a := m.Applied(t0, 1, train.Position{Step: 1, StepInEpoch: 1}, 0xfeed, nil)
	var sn *nicepb.Snapshotted
	for _, msg := range a.Send {
		if s := msg.GetSnapshotted(); s != nil {
			sn = s
		}
	}
	if sn == nil || sn.Generation != 1 || sn.Position.GetStep() != 1 || sn.StateDigest != 0xfeed {
		t.Fatalf("after applying a snapshot commit it sends %v, want Snapshotted{generation 1, step 1, digest feed}", a.Send)
	}
}
