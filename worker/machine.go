package worker

import (
	"fmt"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/ring"
	"github.com/nice-flow/nice/train"
)

// Machine is the worker's side of the protocol as a deterministic state
// machine, in the manner of coordinator.Machine: events come in (messages of
// the session, results of the work it ordered, ticks of a clock), and it
// returns Actions: messages to send and at most one piece of work to do
// (prepare the ring, fetch a state, compute a step's gradient and all-reduce
// it, apply a committed step, evaluate). It does no I/O and reads no clock;
// Worker carries out its actions and feeds back their results, and the
// simulation tests drive it together with coordinator.Machine.
//
// What it guarantees on this side (docs/design.md, "The joining rule"):
// it trains only in a generation it was planned into and started in, and
// only from the very state the Start names (position and digest); a step's
// update is applied only when its commit arrives, once, in order; a commit
// received before a newer Plan is applied before the Plan is acted on (the
// coordinator sent it first and plans assuming it); work ordered for an
// older generation is cancelled and its result ignored.
type Machine struct {
	cfg MachineConfig

	attached bool
	epochs   int // of the run, from the coordinator's configuration

	// What the trainer holds. digestKnown says digest describes pos (it
	// does after a prepare or a fetch; an applied step changes the state).
	pos         train.Position
	digest      uint64
	digestKnown bool

	plan    *nicepb.Plan // the current generation's plan (nil: none)
	started bool         // Start received for plan's generation
	broken  bool         // the ring of plan's generation broke
	held    bool         // a commit said hold: wait for the next plan

	// The one piece of work in flight.
	busy    work
	busyGen uint64

	// What waits for the work in flight to end.
	needPrepare  bool          // act on plan once not busy
	pendingFetch *nicepb.Fetch // run once not busy (and not before retryFetchAt)
	inFlight     *nicepb.Fetch // the fetch being run
	retryFetchAt time.Time     // a failed fetch is retried then
	retries      int

	applySnap bool  // the commit being applied asks for a snapshot
	awaiting  bool  // a report was sent; its commit is awaited
	reported  int64 // the step reported
	evalEpoch int   // > 0: evaluate this epoch before the next step

	// The previous committed step's times, sent with the next report:
	// reportedAt is when its report went out, committedAt when its commit
	// came.
	reportedAt, committedAt time.Time
	commitWait, update      float64 // seconds

	leaving   bool // told to stop: asked the coordinator to let it go
	dismissed bool

	stats MachineStats
}

// MachineConfig is what the protocol needs to know.
type MachineConfig struct {
	// DigestEvery asks for a parameter digest in every this many steps'
	// reports (0: never).
	DigestEvery int
	// FetchRetryMin and FetchRetryMax bound the backoff between attempts
	// to fetch a state whose transfer failed.
	FetchRetryMin, FetchRetryMax time.Duration
}

// MachineStats count what the machine did.
type MachineStats struct {
	Generation uint64
	Rank, Size int
	Applied    int64 // committed steps applied
}

type work int

const (
	idle work = iota
	preparing
	fetching
	computing
	applying
	evaluating
)

func (k work) String() string {
	return [...]string{"idle", "preparing", "fetching", "computing", "applying", "evaluating"}[k]
}

// Actions is what a Machine call asks the worker to do. At most one of the
// work fields is set; its result comes back through the matching method
// (Prepared, Fetched, Computed, Applied, Evaluated).
type Actions struct {
	Send []*nicepb.WorkerMessage
	// Cancel asks to abandon the work in flight (it belongs to an older
	// generation); its result must still be fed back.
	Cancel bool

	Prepare  *PrepareOrder
	Fetch    *nicepb.Fetch
	Compute  *ComputeOrder
	Apply    *ApplyOrder
	Evaluate *EvalOrder

	// Exit says the worker may stop: it was dismissed, or it is leaving
	// while no coordinator is attached.
	Exit bool
	// Logs are human-readable notes on what happened.
	Logs []string
}

// PrepareOrder configures the ring for a generation and then describes the
// trainer's state (position and digest) in Prepared.
type PrepareOrder struct {
	Generation uint64
	Rank       int
	Peers      []ring.Peer
}

// ComputeOrder computes the gradient of this rank's shard of the step at
// Position and all-reduces it; the result comes back in Computed.
type ComputeOrder struct {
	Generation   uint64
	Position     train.Position
	Rank, Size   int
	ParamsDigest bool // include a digest of the parameters in the report
}

// ComputeResult is what a ComputeOrder produced.
type ComputeResult struct {
	Generation uint64
	Step       int64
	// Err is set when the all-reduce failed (or the work was cancelled);
	// Peer names the peer the ring blames, if any.
	Err  error
	Peer string
	// The report's fields.
	GradDigest, ParamsDigest         uint32
	SumLL                            float64
	Lo, Hi                           int
	ComputeSeconds, AllreduceSeconds float64
	NonFinite                        bool
}

// ApplyOrder applies a committed step (and keeps a snapshot if asked).
type ApplyOrder struct {
	Generation uint64
	Commit     *nicepb.Commit
}

// EvalOrder scores this rank's shard of the scored set.
type EvalOrder struct {
	Generation uint64
	Epoch      int
	Rank, Size int
}

// NewMachine returns a machine for a worker that holds no configured state
// yet (its position is step 0 until Prepared says otherwise).
func NewMachine(cfg MachineConfig) *Machine {
	if cfg.FetchRetryMin <= 0 {
		cfg.FetchRetryMin = 200 * time.Millisecond
	}
	if cfg.FetchRetryMax < cfg.FetchRetryMin {
		cfg.FetchRetryMax = 4 * cfg.FetchRetryMin
	}
	return &Machine{cfg: cfg}
}

// Stats returns the machine's counters.
func (m *Machine) Stats() MachineStats { return m.stats }

// Dismissed reports whether the coordinator let this worker go.
func (m *Machine) Dismissed() bool { return m.dismissed }

// Position is the trainer's position as the machine knows it.
func (m *Machine) Position() train.Position { return m.pos }

// Training reports whether the machine is started in a generation (and not
// held or broken): it is computing, or waiting for a commit or its work.
func (m *Machine) Training() bool {
	return m.plan != nil && m.started && !m.broken && !m.held
}

// Generation is the generation of the current plan (0: none).
func (m *Machine) Generation() uint64 {
	if m.plan == nil {
		return 0
	}
	return m.plan.Generation
}

// Attached handles a new session: the coordinator welcomed the worker and
// the trainer runs the run's configuration of epochs epochs.
func (m *Machine) Attached(now time.Time, epochs int) Actions {
	var a Actions
	m.attached = true
	m.epochs = epochs
	m.resetGeneration(&a)
	if m.leaving {
		a.Send = append(a.Send, m.leaveMsg())
	}
	return a
}

// Detached handles the end of the session: whatever generation it was in
// is over (the coordinator re-plans without this worker).
func (m *Machine) Detached(now time.Time) Actions {
	var a Actions
	m.attached = false
	m.resetGeneration(&a)
	if m.leaving {
		a.Exit = true
		a.Logs = append(a.Logs, "leaving: the coordinator is gone, nothing waits for this worker")
	}
	return a
}

// resetGeneration forgets the current generation, cancelling its work.
func (m *Machine) resetGeneration(a *Actions) {
	m.plan = nil
	m.started, m.broken, m.held, m.awaiting = false, false, false, false
	m.needPrepare, m.pendingFetch, m.evalEpoch = false, nil, 0
	m.retryFetchAt, m.retries = time.Time{}, 0
	if m.busy == computing || m.busy == fetching {
		a.Cancel = true
	}
}

// Stop handles the worker being told to stop (SIGTERM): it asks the
// coordinator to let it go once its state is checkpointed, and goes on
// taking part until then.
func (m *Machine) Stop(now time.Time) Actions {
	var a Actions
	if m.leaving {
		return a
	}
	m.leaving = true
	if !m.attached {
		a.Exit = true
		return a
	}
	a.Send = append(a.Send, m.leaveMsg())
	a.Logs = append(a.Logs, "told to stop: asking the coordinator to let this worker go once its state is checkpointed")
	return a
}

func (m *Machine) leaveMsg() *nicepb.WorkerMessage {
	return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Leave{Leave: &nicepb.Leave{Reason: "told to stop", Position: statexfer.ToPB(m.pos)}}}
}

// Message handles one message from the coordinator.
func (m *Machine) Message(now time.Time, msg *nicepb.CoordinatorMessage) Actions {
	var a Actions
	if !m.attached {
		return a
	}
	switch k := msg.Kind.(type) {
	case *nicepb.CoordinatorMessage_Plan:
		m.onPlan(k.Plan, &a)
	case *nicepb.CoordinatorMessage_Fetch:
		m.onFetch(k.Fetch, &a)
	case *nicepb.CoordinatorMessage_Start:
		m.onStart(k.Start, &a)
	case *nicepb.CoordinatorMessage_Commit:
		m.onCommit(now, k.Commit, &a)
	case *nicepb.CoordinatorMessage_Dismiss:
		if m.leaving && !m.dismissed {
			m.dismissed = true
			a.Exit = true
			a.Logs = append(a.Logs, fmt.Sprintf("dismissed: the checkpoint at step %d holds the state", k.Dismiss.CheckpointStep))
		}
	}
	return a
}

func (m *Machine) onPlan(p *nicepb.Plan, a *Actions) {
	if m.plan != nil && p.Generation <= m.plan.Generation {
		return // stale
	}
	if p.Rank < 0 || int(p.Rank) >= len(p.Ring) {
		a.Logs = append(a.Logs, fmt.Sprintf("plan of generation %d gives rank %d of %d: ignored", p.Generation, p.Rank, len(p.Ring)))
		return
	}
	m.resetGeneration(a)
	m.plan = p
	m.needPrepare = true
	m.stats.Generation, m.stats.Rank, m.stats.Size = p.Generation, int(p.Rank), len(p.Ring)
	m.next(a)
}

func (m *Machine) onFetch(f *nicepb.Fetch, a *Actions) {
	if m.plan == nil || f.Generation != m.plan.Generation || m.started {
		return
	}
	m.pendingFetch = f
	m.retries = 0
	m.retryFetchAt = time.Time{}
	m.next(a)
}

func (m *Machine) onStart(s *nicepb.Start, a *Actions) {
	if m.plan == nil || s.Generation != m.plan.Generation || m.started || m.needPrepare || m.pendingFetch != nil || m.busy == fetching {
		return
	}
	want := statexfer.FromPB(s.Position)
	if !m.digestKnown || m.pos != want || m.digest != s.StateDigest {
		// The coordinator believes this worker holds the generation's state
		// and it does not: do not train, and have the generation redone.
		a.Logs = append(a.Logs, fmt.Sprintf("generation %d starts from step %d digest %016x, this worker holds step %d digest %016x (known %v): not training",
			s.Generation, want.Step, s.StateDigest, m.pos.Step, m.digest, m.digestKnown))
		a.Send = append(a.Send, m.failureMsg(s.Generation, "this worker does not hold the state the generation starts from"))
		m.broken = true
		return
	}
	m.started = true
	m.evalEpoch = int(s.EvalEpoch)
	m.next(a)
}

func (m *Machine) onCommit(now time.Time, c *nicepb.Commit, a *Actions) {
	if m.plan == nil || c.Generation != m.plan.Generation || !m.started || m.broken {
		return
	}
	if !m.awaiting || c.Step != m.reported {
		a.Logs = append(a.Logs, fmt.Sprintf("commit of step %d while awaiting %v step %d: ignored", c.Step, m.awaiting, m.reported))
		return
	}
	m.awaiting = false
	m.committedAt = now
	m.commitWait = elapsed(m.reportedAt, now)
	if c.EvalEpoch > 0 {
		m.evalEpoch = int(c.EvalEpoch)
	}
	if c.Hold {
		m.held = true
	}
	// Nothing else is in flight while a commit is awaited.
	m.order(applying)
	m.applySnap = c.Snapshot
	a.Apply = &ApplyOrder{Generation: c.Generation, Commit: c}
}

// Prepared handles the end of a PrepareOrder: the ring is configured (or
// err says why not) and the trainer holds the state at pos with digest.
func (m *Machine) Prepared(now time.Time, gen uint64, pos train.Position, digest uint64, err error) Actions {
	var a Actions
	if !m.done(preparing, &a) {
		return a
	}
	m.pos, m.digest, m.digestKnown = pos, digest, true
	if err != nil {
		a.Logs = append(a.Logs, fmt.Sprintf("generation %d: %v", gen, err))
	} else if m.plan != nil && m.plan.Generation == gen && !m.needPrepare {
		a.Send = append(a.Send, m.readyMsg())
	}
	m.next(&a)
	return a
}

// Fetched handles the end of a fetch: on success the trainer now holds the
// state at pos with digest; on failure it still holds what it held.
func (m *Machine) Fetched(now time.Time, gen uint64, pos train.Position, digest uint64, err error) Actions {
	var a Actions
	if !m.done(fetching, &a) {
		return a
	}
	f := m.inFlight
	m.inFlight = nil
	current := m.plan != nil && m.plan.Generation == gen && !m.needPrepare
	if err != nil {
		if current && m.pendingFetch == nil {
			wait := min(m.cfg.FetchRetryMin<<min(m.retries, 10), m.cfg.FetchRetryMax)
			m.retries++
			m.pendingFetch = f
			m.retryFetchAt = now.Add(wait)
			a.Logs = append(a.Logs, fmt.Sprintf("fetching the state of generation %d failed (attempt %d), retrying in %v: %v", gen, m.retries, wait, err))
		}
		m.next(&a)
		return a
	}
	m.pos, m.digest, m.digestKnown = pos, digest, true
	m.retryFetchAt = time.Time{}
	if current && m.pendingFetch == nil {
		a.Send = append(a.Send, m.readyMsg())
	}
	m.next(&a)
	return a
}

// Computed handles the end of a ComputeOrder.
func (m *Machine) Computed(now time.Time, r ComputeResult) Actions {
	var a Actions
	if !m.done(computing, &a) {
		return a
	}
	if m.plan == nil || r.Generation != m.plan.Generation || !m.started || m.broken {
		m.next(&a)
		return a
	}
	if r.Err != nil {
		m.broken = true
		a.Send = append(a.Send, m.failureMsg(r.Generation, r.Err.Error()))
		a.Send[len(a.Send)-1].GetRingFailure().PeerId = r.Peer
		a.Logs = append(a.Logs, fmt.Sprintf("all-reduce of step %d failed: %v", r.Step, r.Err))
		return a
	}
	m.awaiting, m.reported, m.reportedAt = true, r.Step, now
	a.Send = append(a.Send, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: &nicepb.Report{
		Generation: r.Generation, Step: r.Step, GradDigest: r.GradDigest, SumLl: r.SumLL,
		Lo: int32(r.Lo), Hi: int32(r.Hi), ParamsDigest: r.ParamsDigest,
		ComputeSeconds: r.ComputeSeconds, AllreduceSeconds: r.AllreduceSeconds, NonFinite: r.NonFinite,
		CommitWaitSeconds: m.commitWait, UpdateSeconds: m.update, Numerics: train.Numerics,
	}}})
	return a
}

// Applied handles the end of an ApplyOrder: the trainer is now at pos, or
// err says the update was refused and the state is unchanged.
//
// When the commit asked for a snapshot, snapDigest is the kept snapshot's
// state digest: the worker tells the coordinator, which checkpoints the
// snapshot only once every member named the same digest.
func (m *Machine) Applied(now time.Time, gen uint64, pos train.Position, snapDigest uint64, err error) Actions {
	var a Actions
	if !m.done(applying, &a) {
		return a
	}
	if err != nil {
		// The replicas can no longer agree: leave the generation; the
		// coordinator times the step out and re-plans, and this worker's
		// Ready then shows its state.
		m.broken = true
		a.Send = append(a.Send, m.failureMsg(gen, "committed step not applied: "+err.Error()))
		a.Logs = append(a.Logs, fmt.Sprintf("committed step not applied: %v", err))
		m.next(&a)
		return a
	}
	m.pos = pos
	m.digestKnown = false
	m.stats.Applied++
	m.update = elapsed(m.committedAt, now)
	if m.applySnap {
		// The snapshot is the state now held: its digest describes it.
		m.digest, m.digestKnown = snapDigest, true
		// Even if a newer plan came meanwhile: the commit's generation
		// vouches for the snapshot it asked for.
		a.Send = append(a.Send, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Snapshotted{Snapshotted: &nicepb.Snapshotted{
			Generation: gen, Position: statexfer.ToPB(pos), StateDigest: snapDigest,
		}}})
	}
	m.next(&a)
	return a
}

// Evaluated handles the end of an EvalOrder.
func (m *Machine) Evaluated(now time.Time, gen uint64, epoch int, sumLL float64, lo, hi int) Actions {
	var a Actions
	if !m.done(evaluating, &a) {
		return a
	}
	if m.plan != nil && m.plan.Generation == gen && m.started {
		a.Send = append(a.Send, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Eval{Eval: &nicepb.EvalReport{
			Generation: gen, Epoch: int32(epoch), SumLl: sumLL, Lo: int32(lo), Hi: int32(hi),
		}}})
	}
	m.next(&a)
	return a
}

// Tick advances time: a failed fetch is retried when its backoff is over.
func (m *Machine) Tick(now time.Time) Actions {
	var a Actions
	if m.pendingFetch != nil && !m.retryFetchAt.IsZero() && !now.Before(m.retryFetchAt) {
		m.retryFetchAt = time.Time{}
		m.next(&a)
	}
	return a
}

// done marks the work in flight finished; a result of work that is not in
// flight (a bug of the caller) is logged and dropped.
func (m *Machine) done(k work, a *Actions) bool {
	if m.busy != k {
		a.Logs = append(a.Logs, fmt.Sprintf("result of %s while %s is in flight: dropped", k, m.busy))
		return false
	}
	m.busy = idle
	return true
}

// order records that work k is now in flight.
func (m *Machine) order(k work) {
	m.busy = k
	m.busyGen = m.Generation()
}

// next orders the next piece of work, if nothing is in flight.
func (m *Machine) next(a *Actions) {
	if m.busy != idle {
		if m.busyGen != m.Generation() && (m.busy == computing || m.busy == fetching) {
			a.Cancel = true
		}
		return
	}
	if m.plan == nil {
		return
	}
	gen := m.plan.Generation
	switch {
	case m.needPrepare:
		m.needPrepare = false
		peers := make([]ring.Peer, len(m.plan.Ring))
		for i, p := range m.plan.Ring {
			peers[i] = ring.Peer{ID: p.Id, Addr: p.Addr}
		}
		m.order(preparing)
		a.Prepare = &PrepareOrder{Generation: gen, Rank: int(m.plan.Rank), Peers: peers}
	case m.pendingFetch != nil && m.retryFetchAt.IsZero():
		m.inFlight, m.pendingFetch = m.pendingFetch, nil
		m.order(fetching)
		a.Fetch = m.inFlight
	case m.pendingFetch != nil:
		// waiting for the retry; Tick re-orders the fetch
	case !m.started || m.broken:
	case m.evalEpoch > 0:
		e := m.evalEpoch
		m.evalEpoch = 0
		m.order(evaluating)
		a.Evaluate = &EvalOrder{Generation: gen, Epoch: e, Rank: int(m.plan.Rank), Size: len(m.plan.Ring)}
	case m.held || m.awaiting || m.pos.Epoch >= m.epochs:
	default:
		m.order(computing)
		a.Compute = &ComputeOrder{Generation: gen, Position: m.pos, Rank: int(m.plan.Rank), Size: len(m.plan.Ring),
			ParamsDigest: m.cfg.DigestEvery > 0 && m.pos.Step%int64(m.cfg.DigestEvery) == 0}
	}
}

// failureMsg tells the coordinator that this worker cannot go on in
// generation gen (it re-plans after its ring grace).
func (m *Machine) failureMsg(gen uint64, why string) *nicepb.WorkerMessage {
	return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_RingFailure{RingFailure: &nicepb.RingFailure{Generation: gen, Error: why}}}
}

func (m *Machine) readyMsg() *nicepb.WorkerMessage {
	return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Ready{Ready: &nicepb.Ready{
		Generation: m.plan.Generation, HasState: true, Position: statexfer.ToPB(m.pos), StateDigest: m.digest,
	}}}
}

// elapsed is the seconds from a to b, 0 when a is unset or after b (a
// report never carries a duration the coordinator would refuse).
func elapsed(a, b time.Time) float64 {
	if a.IsZero() || b.Before(a) {
		return 0
	}
	return b.Sub(a).Seconds()
}
