package coordinator

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// MachineConfig fixes what the step/generation state machine needs to know
// about the run.
type MachineConfig struct {
	// MinWorkers is how many attached workers a generation needs.
	MinWorkers int
	// Settle is how long membership must be quiet after a join before a new
	// generation takes the newcomer in, so that workers starting together
	// enter together.
	Settle time.Duration
	// PrepareTimeout bounds the preparation of a generation (ring set-up and
	// state transfer); workers not Ready by then are dropped.
	PrepareTimeout time.Duration
	// StepTimeout bounds one step; after it the generation is redone.
	StepTimeout time.Duration
	// RingGrace is how long a reported ring failure waits for the blamed
	// peer to be confirmed gone before the generation is simply redone.
	RingGrace time.Duration
	// TrainN and EvalN are the sizes of the training and the scored sets.
	TrainN, EvalN int
	// Batch is the global batch size; Epochs the number of epochs to train.
	Batch, Epochs int
	// CheckpointEvery asks for a snapshot every this many steps (0: only at
	// epoch ends and on request).
	CheckpointEvery int
	// DigestEvery is how often (in steps) workers include a parameter digest
	// in their reports; informational for the machine.
	DigestEvery int
	// StopAt, if positive, holds training once this many steps are
	// committed, with a checkpoint of that state (as RequestStop does).
	StopAt int64
	// SaveRetry is how often a held or finished run asks again for the
	// checkpoint of the state it holds while none is stored (a write failed,
	// say, on a full disk). Zero means 5 s.
	SaveRetry time.Duration
	// LeaveStall bounds how long a step in flight may keep members that
	// asked to leave waiting for the commit that holds for them: after it,
	// the step is abandoned (and redone later) and the state they hold is
	// saved without it, before they give up waiting (a worker's
	// --leave-timeout, 20 s). Zero means 5 s.
	LeaveStall time.Duration
}

// Machine is the coordinator's step and generation logic as a deterministic
// state machine: events in (Handle), messages and requests out (Output). It
// does no I/O and reads no clock; see the package documentation.
type Machine struct {
	cfg MachineConfig
	spe int

	workers map[string]*workerState
	gen     uint64
	// genFloor is the newest generation an attached worker took part in
	// (under an earlier coordinator): the next generation is numbered above.
	genFloor uint64
	phase    Phase
	ring     []string // worker ids in rank order
	// next is the position of the next step to commit.
	next train.Position

	// coordinator's own state, served to workers when no worker holds the
	// state at next (start, coordinator restart, every worker lost).
	coordPos    train.Position
	coordDigest uint64
	coordAddr   string

	// generation preparation
	phaseSince   time.Time
	refDigest    uint64
	lastJoin     time.Time
	joinPending  bool
	ringFailedAt time.Time
	// accusers holds, for the generation whose ring broke, each member
	// named as the broken peer and the members that named it; blamed
	// counts the broken rings each worker was held to account for.
	accusers map[string]map[string]bool
	blamed   map[string]int
	// benched holds the workers dropped for breaking rings: attached again,
	// they wait out their time before a generation takes them, so that a
	// worker the others cannot reach (a wrong address, NAT) does not stall
	// every generation it is planned into.
	benched map[string]bench

	// the step in flight
	reports map[string]*nicepb.Report
	// mixedNumericsGen is the generation whose mixed builds were logged.
	mixedNumericsGen uint64

	// evaluation of a completed epoch
	evalEpoch int
	evals     map[string]*nicepb.EvalReport

	snapshotWanted bool
	stopWanted     bool
	// leaveWanted holds the run at the next commit so that leaving members
	// can be let go once that state is checkpointed; leaveSince is when.
	leaveWanted bool
	leaveSince  time.Time
	// stored is the step of the newest checkpoint known to be on disk;
	// saveAsked when the state at next was last asked for.
	stored    int64
	saveAsked time.Time

	// Checkpoints are stored only of a state the replicas agreed on: agreed
	// lists the newest such states (one is added when a generation is
	// admitted, and when every member reported the same digest for a
	// snapshot); snapDigests collect the members' digests of the snapshot
	// at snapPos.
	agreed      []Agreement
	snapPos     train.Position
	snapDigests map[string]uint64
	// snapGen and snapRing are the generation and members of the commit
	// that asked for the snapshot at snapPos: they vouch for it even when
	// that same commit ended their generation (a hold for leaving workers).
	snapGen  uint64
	snapRing []string

	stats Stats
}

// Phase is where the machine stands.
type Phase string

// The phases.
const (
	Idle      Phase = "idle"      // not enough workers
	Preparing Phase = "preparing" // a generation is being set up
	Running   Phase = "running"   // steps are being taken
	Holding   Phase = "holding"   // stopped at a step boundary on request
	Finished  Phase = "finished"  // all epochs trained and scored
)

type workerState struct {
	id, addr    string
	incarnation uint64
	// leaving: the worker asked to be let go (Leave); it takes part in no
	// new generation and is dismissed once the state is checkpointed.
	leaving bool
	// for the current generation
	member  bool
	ready   *nicepb.Ready
	fetched bool
	// synced: the worker's state digest equals the generation's. Set in
	// one place only, admit; see MemberState.
	synced bool
	// leaveAt is the step whose stored checkpoint lets a leaving worker go:
	// leaveNone (not leaving), leavePending (at the next commit), or a step.
	leaveAt int64
	// dismissed: Dismiss was sent; the session ends from the worker's side.
	dismissed bool
	// promised is the step of the newest state it was sent the means to
	// reach (a commit, which it applies before anything else, or a
	// fetch): what it may hold once the messages on the way arrive.
	promised int64
	// leftAt and leftDigest are the state its Leave named (the digest 0
	// when the worker did not know it).
	leftAt     train.Position
	leftDigest uint64
}

const (
	leaveNone    = -1
	leavePending = -2
)

// Stats are counters the status reports.
type Stats struct {
	Committed       int64 // steps committed by this coordinator process
	Redone          int64 // steps whose first attempt was abandoned
	Generations     int64 // generations started
	DigestMismatch  int64 // reports whose digests disagreed
	LedgerErrors    int64 // commits that broke the ledger
	LastCommit      time.Time
	LastStepSeconds float64 // wall time of the last committed step
	LastAllreduce   float64 // slowest member's all-reduce time in the last step
	LastTrainNLL    float64
	// Refused counts the workers' messages refused, by reason; LastRefused
	// says what the newest refusal (other than a routine stale message) was.
	Refused     Refusals
	LastRefused string
	// NonFinite counts steps whose reduced gradient (or a shard's
	// log-likelihood) was not finite: the run holds there, unapplied.
	NonFinite int64
}

// Output is what a Handle call asks the server to do.
type Output struct {
	Sends []Send
	// Snapshot, if set, asks for the state at Position from the worker at
	// Addr (it snapshots when applying the commit that reaches Position).
	Snapshot *SnapshotRequest
	// Committed describes the step just committed, for the ledger.
	Committed *Commit
	// Scored is an epoch's completed evaluation.
	Scored *nicepb.EpochScore
	// Disconnect names workers whose sessions must be closed.
	Disconnect []string
	// Logs are human-readable notes on what happened.
	Logs []string
}

// Send is one message to one worker.
type Send struct {
	To  string
	Msg *nicepb.CoordinatorMessage
}

// SnapshotRequest asks for a checkpoint of the state at Position.
type SnapshotRequest struct {
	Position   train.Position
	Addr       string
	Generation uint64
	// Live asks for the worker's live state (it is not training) instead of
	// the snapshot it takes when applying a commit.
	Live bool
}

// Agreement is a state every member of a generation showed the same digest
// for: the only states the server stores as checkpoints (see
// View.Agreed).
type Agreement struct {
	Position train.Position
	Digest   uint64
}

// keepAgreements is how many of the newest agreements the machine lists.
const keepAgreements = 16

// Commit is one committed step with the shards that computed it.
type Commit struct {
	Generation uint64
	Position   train.Position // the step committed
	Batch      int
	Shards     []Shard
	SumLL      float64
	Snapshot   bool // the members snapshot the state this commit reaches
	// Compute and Allreduce are the slowest member's gradient and all-reduce
	// times, in seconds.
	Compute, Allreduce float64
	// Times are each member's reported times, in rank order.
	Times []MemberTimes
	// GradDigest is the digest of the reduced gradient every member
	// reported; ParamsDigest that of the parameters the step started from,
	// when the members were asked for it (0: not asked).
	GradDigest, ParamsDigest uint32
}

// MemberTimes are one member's reported times in a committed step, in
// seconds: its gradient and all-reduce in this step, and its commit wait
// and update in the step before (a report carries them one step late).
type MemberTimes struct {
	Worker                                 string
	Compute, Allreduce, CommitWait, Update float64
}

// Shard is the part of a global batch one worker computed, and the
// Numerics (train.Numerics) of the worker's build (0: it did not say).
type Shard struct {
	Worker   string
	Lo, Hi   int
	Numerics uint32 `json:",omitempty"`
}

// NewMachine returns a machine whose own state (served at coordAddr) is at
// position pos with the given digest: the newest checkpoint, or the
// initial state at step 0.
func NewMachine(cfg MachineConfig, pos train.Position, digest uint64, coordAddr string) *Machine {
	if cfg.MinWorkers < 1 {
		cfg.MinWorkers = 1
	}
	return &Machine{
		cfg:         cfg,
		spe:         train.StepsPerEpoch(cfg.TrainN, cfg.Batch),
		workers:     map[string]*workerState{},
		phase:       Idle,
		next:        pos,
		coordPos:    pos,
		coordDigest: digest,
		coordAddr:   coordAddr,
		blamed:      map[string]int{},
		benched:     map[string]bench{},
		accusers:    map[string]map[string]bool{},
		reports:     map[string]*nicepb.Report{},
		evals:       map[string]*nicepb.EvalReport{},
		snapDigests: map[string]uint64{},
		// Its own state is stored and verified.
		agreed: []Agreement{{Position: pos, Digest: digest}},
		// The state a machine starts from is stored: a checkpoint, or the
		// initial state, which the configuration reproduces.
		stored: pos.Step,
	}
}

// View is the machine's state as the server shows and uses it.
type View struct {
	Phase         Phase
	Generation    uint64
	Next          train.Position // the next step to commit
	StepsPerEpoch int
	Ring          []string // member ids in rank order
	Members       []MemberView
	Stats         Stats
	// Stopped: a requested stop is complete as far as the machine goes:
	// training holds at a step boundary, or no worker is left.
	Stopped bool
	// Agreed lists the newest states the replicas agreed on, oldest
	// first: a checkpoint is stored only if its state is one of them.
	Agreed []Agreement
}

// View returns the machine's state for the server.
func (m *Machine) View() View {
	return View{
		Phase: m.phase, Generation: m.gen, Next: m.next, StepsPerEpoch: m.spe,
		Ring: m.Ring(), Members: m.Members(), Stats: m.stats,
		Stopped: m.stopWanted && (m.phase == Holding || m.phase == Idle),
		Agreed:  slices.Clone(m.agreed),
	}
}

// Phase returns the current phase.
func (m *Machine) Phase() Phase { return m.phase }

// Generation returns the current generation.
func (m *Machine) Generation() uint64 { return m.gen }

// Next returns the position of the next step to commit.
func (m *Machine) Next() train.Position { return m.next }

// Ring returns the worker ids of the current generation in rank order.
func (m *Machine) Ring() []string { return slices.Clone(m.ring) }

// Stats returns the counters.
func (m *Machine) Stats() Stats { return m.stats }

// Rank returns a worker's rank in the current generation, or -1 when it
// has none (see MemberState).
func (m *Machine) Rank(id string) int {
	w := m.workers[id]
	if w == nil {
		return -1
	}
	_, rank := m.standing(w)
	return rank
}

// Workers returns the attached worker ids, sorted.
func (m *Machine) Workers() []string {
	ids := make([]string, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// candidates are the attached workers a new generation takes in: all but
// those leaving, sorted.
func (m *Machine) candidates(now time.Time) []string {
	ids := m.Workers()
	return slices.DeleteFunc(ids, func(id string) bool { return m.workers[id].leaving || m.isBenched(id, now) })
}

// bench is how long a worker dropped for breaking rings waits before a
// generation takes it again, and how many times it was dropped so.
type bench struct {
	until time.Time
	times int
}

// Benching: the first drop benches a worker for benchFirst, each further
// one (without a committed step in between) for twice as long, up to
// benchMax.
const (
	benchFirst = 30 * time.Second
	benchMax   = 8 * time.Minute
)

// benchWorker notes that worker id was dropped for breaking rings.
func (m *Machine) benchWorker(now time.Time, id string) time.Duration {
	b := m.benched[id]
	d := min(benchFirst<<min(b.times, 10), benchMax)
	m.benched[id] = bench{until: now.Add(d), times: b.times + 1}
	return d
}

func (m *Machine) isBenched(id string, now time.Time) bool {
	b, ok := m.benched[id]
	return ok && now.Before(b.until)
}

// MemberState is what an attached worker is in the current generation.
type MemberState string

// The member states, as the status shows them.
const (
	// Waiting: attached, not in the current generation.
	Waiting MemberState = "waiting"
	// Joining: in the current generation's plan, its state not yet shown
	// to be the generation's (it is fetching it, or not yet Ready).
	Joining MemberState = "preparing"
	// Training: in the current generation with the generation's state.
	Training MemberState = "training"
	// Leaving: asked to leave; let go once the state is checkpointed.
	Leaving MemberState = "leaving"
)

// MemberView is one attached worker as the status shows it.
type MemberView struct {
	ID, Addr string
	State    MemberState
	Rank     int // in the current generation; -1 when not a member
}

// Members lists the attached workers, sorted by id, each with its standing.
func (m *Machine) Members() []MemberView {
	out := make([]MemberView, 0, len(m.workers))
	for _, id := range m.Workers() {
		w := m.workers[id]
		st, rank := m.standing(w)
		out = append(out, MemberView{ID: id, Addr: w.addr, State: st, Rank: rank})
	}
	return out
}

// standing is THE rule of membership, the only place that decides it: a
// worker is Training, with a rank, only while it is a member of the
// current generation AND its state digest was shown equal to the
// generation's (synced, set by admit when the generation starts), in every
// phase. A member that has not shown it is Joining; a worker that attached
// since the generation was planned, or re-attached as a new process under
// the same id, is Waiting whatever the phase, until a later generation
// admits it.
func (m *Machine) standing(w *workerState) (MemberState, int) {
	rank := -1
	if w.member {
		rank = slices.Index(m.ring, w.id)
	}
	switch {
	case w.leaving:
		return Leaving, rank
	case rank < 0:
		return Waiting, -1
	case w.synced && (m.phase == Running || m.phase == Holding || m.phase == Finished):
		return Training, rank
	default:
		return Joining, rank
	}
}

// admit makes every member of the ring a synced member of the generation:
// the one place where synced is set. The caller has checked that every
// member's Ready names the state at next with the reference digest.
func (m *Machine) admit() {
	for _, id := range m.ring {
		m.workers[id].synced = true
	}
}

// Addr returns an attached worker's address.
func (m *Machine) Addr(id string) string {
	if w := m.workers[id]; w != nil {
		return w.addr
	}
	return ""
}

// NeedScore says that the state the machine starts from ends epoch, whose
// score the checkpoint lacks (the coordinator died before it came): the
// first generation scores it before training on.
func (m *Machine) NeedScore(epoch int) {
	if epoch > 0 && m.evalEpoch == 0 && m.next.Epoch == epoch && m.next.StepInEpoch == 0 {
		m.evalEpoch = epoch
	}
}

// SetOwnState records that the coordinator now holds the state at pos (a
// checkpoint was taken), so it can serve it if every worker is lost.
func (m *Machine) SetOwnState(pos train.Position, digest uint64) {
	if pos.Step < m.coordPos.Step {
		return // it keeps the newer one
	}
	m.coordPos, m.coordDigest = pos, digest
}

// done reports whether every epoch is trained.
func (m *Machine) done() bool { return m.next.Epoch >= m.cfg.Epochs }

// Attach handles a worker's Hello. A worker attaching again with the same
// or a newer incarnation (it reconnected, or restarted) replaces its old
// session; one with an older incarnation is another process under an id a
// newer one holds, and is refused with ErrIdentityTaken, so that two workers
// started with the same id do not evict each other forever. lastGen is the
// newest generation the worker took part in: generations are numbered above
// it, so that they keep growing across coordinator restarts.
func (m *Machine) Attach(now time.Time, id, addr string, incarnation, lastGen uint64) (Output, error) {
	var out Output
	if old := m.workers[id]; old != nil {
		if incarnation < old.incarnation {
			err := fmt.Errorf("%w session from worker %s at %s (incarnation %d): %w (incarnation %d, at %s); give each worker its own id",
				ErrRefused, id, clip(addr), incarnation, ErrIdentityTaken, old.incarnation, old.addr)
			m.refuse(&out, &m.stats.Refused.Identity, err)
			return out, err
		}
		out.Logs = append(out.Logs, fmt.Sprintf("worker %s re-attached (incarnation %d after %d)", id, incarnation, old.incarnation))
		m.removeWorker(now, id, &out)
	}
	m.genFloor = max(m.genFloor, lastGen)
	m.workers[id] = &workerState{id: id, addr: addr, incarnation: incarnation, leaveAt: leaveNone}
	if m.isBenched(id, now) {
		// It waits, attached; Tick lets it join when its time is over.
		out.Logs = append(out.Logs, fmt.Sprintf("worker %s attached from %s; it broke rings before, so no generation takes it until %s", id, addr, m.benched[id].until.UTC().Format(time.TimeOnly)))
		return out, nil
	}
	m.lastJoin = now
	m.joinPending = true
	out.Logs = append(out.Logs, fmt.Sprintf("worker %s attached from %s", id, addr))
	return out, nil
}

// refuse counts a refused message under reason and notes it: stale
// messages are routine after a failure and only counted; a non-member's
// is shown in the status; the rest are logged too.
func (m *Machine) refuse(out *Output, reason *int64, err error) {
	*reason++
	if reason == &m.stats.Refused.Stale {
		return
	}
	m.stats.LastRefused = err.Error()
	if reason != &m.stats.Refused.NonMember {
		out.Logs = append(out.Logs, err.Error())
	}
}

// refusal builds the error of a refused message.
func refusal(kind, id, format string, args ...any) error {
	return fmt.Errorf("%w %s from worker %s: %s", ErrRefused, kind, id, fmt.Sprintf(format, args...))
}

// from classifies a message from worker id for generation gen: nil if it
// comes from a member of the current generation; otherwise it is counted
// as refused (stale or from a non-member) and the caller drops it.
func (m *Machine) from(out *Output, id, kind string, gen uint64) *workerState {
	w := m.workers[id]
	switch {
	case w == nil || !w.member:
		m.refuse(out, &m.stats.Refused.NonMember, refusal(kind, id, "not a member of generation %d", m.gen))
		return nil
	case gen != m.gen:
		m.refuse(out, &m.stats.Refused.Stale, refusal(kind, id, "generation %d, not %d", gen, m.gen))
		return nil
	}
	return w
}

// invalid refuses a member's malformed message and drops the member: the
// generation is redone without it now instead of waiting for a timeout on
// the message it failed to send. Its session is closed; it may attach again.
func (m *Machine) invalid(now time.Time, out *Output, id, kind string, err error) {
	m.refuse(out, &m.stats.Refused.Invalid, refusal(kind, id, "%v; its session is closed", err))
	out.Disconnect = append(out.Disconnect, id)
	m.removeWorker(now, id, out)
}

// Detach handles a worker's session ending (or gossip declaring it dead). It
// ignores a stale incarnation.
func (m *Machine) Detach(now time.Time, id string, incarnation uint64, reason string) Output {
	var out Output
	w := m.workers[id]
	if w == nil || (incarnation != 0 && w.incarnation != incarnation) {
		return out
	}
	out.Logs = append(out.Logs, fmt.Sprintf("worker %s left: %s", id, reason))
	m.removeWorker(now, id, &out)
	return out
}

func (m *Machine) removeWorker(now time.Time, id string, out *Output) {
	w := m.workers[id]
	delete(m.workers, id)
	delete(m.blamed, id)
	delete(m.snapDigests, id)
	delete(m.evals, id)
	if i := slices.Index(m.snapRing, id); i >= 0 {
		// The others still vouch for the snapshot they kept.
		m.snapRing = slices.Delete(m.snapRing, i, i+1)
		m.snapAgreement(now, out)
	}
	if w == nil || !w.member {
		return
	}
	switch {
	case m.phase == Preparing || m.phase == Running:
		m.abandonStep()
		m.startGeneration(now, out, "member "+id+" left")
		return
	case m.phase == Finished && m.evalEpoch > 0:
		// No later generation would score the last epoch.
		m.startGeneration(now, out, "member "+id+" left during the final evaluation")
		return
	}
	// Holding, Finished or Idle: no step runs, so no new generation is
	// needed now; the ring just no longer lists the worker (a process that
	// attaches again under its id is a newcomer, see standing).
	m.ring = slices.DeleteFunc(m.ring, func(r string) bool { return r == id })
}

// abandonStep forgets the step in flight; it is redone by the next generation.
func (m *Machine) abandonStep() {
	if len(m.reports) > 0 || m.phase == Running {
		m.stats.Redone++
	}
	clear(m.reports)
}

// startGeneration plans a new generation of every attached worker, or goes
// idle if there are too few.
func (m *Machine) startGeneration(now time.Time, out *Output, why string) {
	clear(m.reports)
	clear(m.evals)
	m.joinPending = false
	m.ringFailedAt = time.Time{}
	clear(m.accusers)
	m.refDigest = 0
	m.settleLeavers(now, out)
	for _, w := range m.workers {
		w.member, w.ready, w.fetched, w.synced = false, nil, false, false
	}
	ids := m.candidates(now)
	if len(ids) < m.cfg.MinWorkers {
		if m.phase != Idle {
			out.Logs = append(out.Logs, fmt.Sprintf("waiting for workers: %d attached, %d needed", len(ids), m.cfg.MinWorkers))
		}
		m.phase, m.ring = Idle, nil
		return
	}
	m.gen = max(m.gen, m.genFloor) + 1
	m.stats.Generations++
	m.phase = Preparing
	m.phaseSince = now
	m.ring = ids
	ring := make([]*nicepb.RingMember, len(ids))
	for i, id := range ids {
		ring[i] = &nicepb.RingMember{Id: id, Addr: m.workers[id].addr}
	}
	for rank, id := range ids {
		m.workers[id].member = true
		out.Sends = append(out.Sends, Send{To: id, Msg: &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Plan{Plan: &nicepb.Plan{
			Generation: m.gen, Ring: ring, Rank: int32(rank), Position: statexfer.ToPB(m.next),
		}}}})
	}
	out.Logs = append(out.Logs, fmt.Sprintf("generation %d (%s): %d workers %v, from step %d", m.gen, why, len(ids), ids, m.next.Step))
}

// Ready handles a worker's Ready for a generation.
func (m *Machine) Ready(now time.Time, id string, r *nicepb.Ready) Output {
	var out Output
	w := m.from(&out, id, "ready", r.Generation)
	if w == nil {
		return out
	}
	if m.phase != Preparing {
		m.refuse(&out, &m.stats.Refused.Stale, refusal("ready", id, "generation %d is past its preparation", m.gen))
		return out
	}
	if r.HasState {
		if err := checkPosition("ready", r.Position, m.spe, m.cfg.Epochs); err != nil {
			m.invalid(now, &out, id, "ready", err)
			return out
		}
	}
	w.ready = r
	for _, id := range m.ring {
		if m.workers[id].ready == nil {
			return out
		}
	}
	m.settleState(now, &out)
	return out
}

// settleState picks the state the generation starts from once every member
// is Ready, asks the members that lack it to fetch it, and starts the
// generation when all hold it.
func (m *Machine) settleState(now time.Time, out *Output) {
	// Who holds the state at next? Group members by digest.
	holders := map[uint64][]string{}
	for _, id := range m.ring {
		r := m.workers[id].ready
		if r.HasState && statexfer.FromPB(r.Position) == m.next {
			holders[r.StateDigest] = append(holders[r.StateDigest], id)
		}
	}
	var ref uint64
	var source string
	switch {
	case m.refDigest != 0 && m.phaseRefValid():
		ref = m.refDigest
	case len(holders) == 0 && m.adoptNewer(out):
		// A restarted coordinator found its workers ahead of its checkpoint,
		// all in one state: it goes on from there (see adoptNewer).
		ref = m.refDigest
		holders[ref] = slices.Clone(m.ring)
	case len(holders) > 0:
		// The digest most members hold; ties go to the lowest-ranked holder.
		best := -1
		for d, ids := range holders {
			if len(ids) > best || (len(ids) == best && slices.Index(m.ring, ids[0]) < slices.Index(m.ring, holders[ref][0])) {
				ref, best = d, len(ids)
			}
		}
		if len(holders) > 1 {
			m.stats.DigestMismatch++
			out.Logs = append(out.Logs, fmt.Sprintf("replicas disagree at step %d: %d distinct states; the majority's is kept", m.next.Step, len(holders)))
		}
	case m.coordPos == m.next:
		ref = m.coordDigest
	case m.joinPending:
		// No member holds it, but a worker that attached since the plan
		// may: take it in before discarding the steps since the checkpoint.
		m.startGeneration(now, out, fmt.Sprintf("no member holds the state at step %d", m.next.Step))
		return
	default:
		// Nobody holds the state at next: every worker that had it is gone.
		// Fall back to the coordinator's newest checkpoint.
		out.Logs = append(out.Logs, fmt.Sprintf("no worker holds the state at step %d; resuming from the checkpoint at step %d", m.next.Step, m.coordPos.Step))
		m.next = m.coordPos
		ref = m.coordDigest
		switch {
		case m.next.StepInEpoch == 0 && m.next.Epoch > 0:
			// The checkpoint ends an epoch whose score it may lack (it
			// may have been taken from a leaving worker before the score
			// came): score it (again; the server keeps one per epoch).
			m.evalEpoch = m.next.Epoch
		case m.evalEpoch > 0:
			// The checkpoint is not the end of the epoch awaiting its
			// score: it is scored when training reaches that end again.
			m.evalEpoch = 0
		}
		for _, id := range m.ring {
			m.workers[id].fetched = false
		}
	}
	m.refDigest = ref
	source = m.coordAddr
	if ids := holders[ref]; len(ids) > 0 {
		source = m.workers[ids[0]].addr
	}
	missing := false
	for _, id := range m.ring {
		w := m.workers[id]
		if w.ready.HasState && statexfer.FromPB(w.ready.Position) == m.next && w.ready.StateDigest == ref {
			continue
		}
		missing = true
		if w.fetched {
			continue // asked already; waiting for its new Ready
		}
		w.fetched = true
		w.promised = max(w.promised, m.next.Step)
		w.ready = nil
		out.Sends = append(out.Sends, Send{To: id, Msg: &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Fetch{Fetch: &nicepb.Fetch{
			Generation: m.gen, SourceAddr: source, Position: statexfer.ToPB(m.next), StateDigest: ref,
		}}}})
		out.Logs = append(out.Logs, fmt.Sprintf("worker %s fetches the state at step %d from %s", id, m.next.Step, source))
	}
	if missing {
		return
	}
	m.admit()
	m.agree(m.next, ref)
	m.refDigest = 0
	m.phase = Running
	m.phaseSince = now
	if m.done() {
		m.phase = Finished
	}
	if m.cfg.StopAt > 0 && m.next.Step >= m.cfg.StopAt {
		m.phase = Holding // the step limit is reached: hold the replicas there
		return
	}
	eval := int32(0)
	if m.evalEpoch > 0 {
		eval = int32(m.evalEpoch)
		clear(m.evals)
	}
	for _, id := range m.ring {
		out.Sends = append(out.Sends, Send{To: id, Msg: &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Start{Start: &nicepb.Start{
			Generation: m.gen, EvalEpoch: eval, Position: statexfer.ToPB(m.next), StateDigest: ref,
		}}}})
	}
}

// adoptNewer handles a coordinator that restarted from a checkpoint older
// than the state its workers kept: before this process commits anything, if
// every member holds one and the same state ahead of next, that state was
// committed by the previous coordinator, so training goes on from it instead
// of redoing the steps since the checkpoint. It sets next and refDigest and
// reports whether it adopted.
func (m *Machine) adoptNewer(out *Output) bool {
	if m.stats.Committed > 0 || len(m.ring) == 0 || m.evalEpoch > 0 {
		// (A score is pending for the state at next: going on would lose
		// it; the generation starts from the checkpoint instead.)
		return false
	}
	first := m.workers[m.ring[0]].ready
	pos := statexfer.FromPB(first.Position)
	if !first.HasState || pos.Step <= m.next.Step {
		return false
	}
	for _, id := range m.ring[1:] {
		r := m.workers[id].ready
		if !r.HasState || statexfer.FromPB(r.Position) != pos || r.StateDigest != first.StateDigest {
			return false
		}
	}
	out.Logs = append(out.Logs, fmt.Sprintf("every worker holds the state at step %d, newer than the checkpoint at step %d: going on from there", pos.Step, m.next.Step))
	m.next = pos
	m.refDigest = first.StateDigest
	if pos.StepInEpoch == 0 && pos.Epoch > 0 && m.evalEpoch == 0 {
		// The epoch that ended there may not have been scored before the
		// previous coordinator died: score it (again).
		m.evalEpoch = pos.Epoch
	}
	return true
}

// phaseRefValid reports whether a reference digest chosen earlier in this
// preparation still has a holder or the coordinator behind it.
func (m *Machine) phaseRefValid() bool {
	if m.refDigest == m.coordDigest && m.coordPos == m.next {
		return true
	}
	for _, id := range m.ring {
		r := m.workers[id].ready
		if r != nil && r.HasState && statexfer.FromPB(r.Position) == m.next && r.StateDigest == m.refDigest {
			return true
		}
	}
	return false
}

// noteMixedNumerics logs, once a generation, that the ring's members run
// builds that compute a step's floats differently (train.Numerics). The run
// is still sound (every member applies the one reduced gradient, and the
// digests say so), but no single build can replay it bit for bit.
func (m *Machine) noteMixedNumerics(shards []Shard, out *Output) {
	if m.mixedNumericsGen == m.gen {
		return
	}
	for _, sh := range shards[1:] {
		if sh.Numerics != shards[0].Numerics {
			m.mixedNumericsGen = m.gen
			out.Logs = append(out.Logs, fmt.Sprintf("generation %d mixes builds that compute a step's floats differently (worker %s: numerics %d, worker %s: numerics %d): training goes on, but nice-coord verify cannot replay these steps bit for bit; run one build on every worker",
				m.gen, shards[0].Worker, shards[0].Numerics, sh.Worker, sh.Numerics))
			return
		}
	}
}

// Report handles a worker's report of a finished all-reduce.
func (m *Machine) Report(now time.Time, id string, r *nicepb.Report) Output {
	var out Output
	if m.from(&out, id, "report", r.Generation) == nil {
		return out
	}
	if m.phase != Running || r.Step != m.next.Step {
		m.refuse(&out, &m.stats.Refused.Stale, refusal("report", id, "step %d, the step in flight is %d (%s)", r.Step, m.next.Step, m.phase))
		return out
	}
	lo, hi := train.BatchBounds(m.cfg.TrainN, m.cfg.Batch, m.next.StepInEpoch)
	if err := checkReport(r, hi-lo); err != nil {
		m.invalid(now, &out, id, fmt.Sprintf("report of step %d", r.Step), err)
		return out
	}
	m.reports[id] = r
	if len(m.reports) < len(m.ring) {
		return out
	}
	m.commit(now, &out)
	return out
}

func (m *Machine) commit(now time.Time, out *Output) {
	lo, hi := train.BatchBounds(m.cfg.TrainN, m.cfg.Batch, m.next.StepInEpoch)
	batch := hi - lo
	for _, id := range m.ring {
		if m.reports[id].NonFinite {
			m.holdNonFinite(id, out)
			return
		}
	}
	first := m.reports[m.ring[0]]
	c := &Commit{Generation: m.gen, Position: m.next, Batch: batch, GradDigest: first.GradDigest}
	var slowest float64
	var sum float64
	ledgerOK := true
	pos := 0
	for rank, id := range m.ring {
		r := m.reports[id]
		if r.GradDigest != first.GradDigest || (r.ParamsDigest != 0 && first.ParamsDigest != 0 && r.ParamsDigest != first.ParamsDigest) {
			m.stats.DigestMismatch++
			out.Logs = append(out.Logs, fmt.Sprintf("step %d: worker %s reports digests %08x/%08x, rank 0 %08x/%08x; redoing the step",
				m.next.Step, id, r.GradDigest, r.ParamsDigest, first.GradDigest, first.ParamsDigest))
			m.abandonStep()
			m.startGeneration(now, out, "digest mismatch")
			return
		}
		wlo, whi := train.Shard(batch, rank, len(m.ring))
		if int(r.Lo) != pos || int(r.Lo) != wlo || int(r.Hi) != whi {
			ledgerOK = false
		}
		pos = int(r.Hi)
		c.Shards = append(c.Shards, Shard{Worker: id, Lo: int(r.Lo), Hi: int(r.Hi), Numerics: r.Numerics})
		if c.ParamsDigest == 0 {
			c.ParamsDigest = r.ParamsDigest
		}
		sum += r.SumLl
		slowest = max(slowest, r.AllreduceSeconds)
		c.Compute = max(c.Compute, r.ComputeSeconds)
		c.Times = append(c.Times, MemberTimes{Worker: id, Compute: r.ComputeSeconds, Allreduce: r.AllreduceSeconds,
			CommitWait: r.CommitWaitSeconds, Update: r.UpdateSeconds})
	}
	if !ledgerOK || pos != batch {
		m.stats.LedgerErrors++
		out.Logs = append(out.Logs, fmt.Sprintf("step %d: shards %v do not partition the batch of %d; redoing the step", m.next.Step, c.Shards, batch))
		m.abandonStep()
		m.startGeneration(now, out, "ledger check failed")
		return
	}
	c.SumLL = sum
	m.noteMixedNumerics(c.Shards, out)
	after := m.next.Next(m.spe)
	if m.cfg.StopAt > 0 && after.Step >= m.cfg.StopAt {
		m.RequestStop()
	}
	epochEnd := after.Epoch != m.next.Epoch
	msg := &nicepb.Commit{Generation: m.gen, Step: m.next.Step, SumLl: sum, Batch: int32(batch)}
	snapshot := epochEnd || m.snapshotWanted || (m.cfg.CheckpointEvery > 0 && after.Step%int64(m.cfg.CheckpointEvery) == 0)
	msg.Snapshot = snapshot
	c.Snapshot = snapshot
	if epochEnd {
		msg.EvalEpoch = int32(after.Epoch)
		m.evalEpoch = after.Epoch
		clear(m.evals)
	}
	leave := m.leaveWanted
	hold := m.stopWanted || leave || (m.joinPending && now.Sub(m.lastJoin) >= m.cfg.Settle)
	// The last step of the run holds too: nothing follows it.
	msg.Hold = hold || after.Epoch >= m.cfg.Epochs
	for _, id := range m.ring {
		m.workers[id].promised = after.Step
		out.Sends = append(out.Sends, Send{To: id, Msg: &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Commit{Commit: msg}}})
	}
	if !m.stats.LastCommit.IsZero() {
		m.stats.LastStepSeconds = now.Sub(m.stats.LastCommit).Seconds()
	}
	m.stats.LastCommit = now
	m.stats.Committed++
	for _, id := range m.ring {
		delete(m.benched, id) // it took part in a committed step
	}
	m.stats.LastAllreduce = slowest
	c.Allreduce = slowest
	m.stats.LastTrainNLL = -sum / float64(batch)
	clear(m.reports)
	out.Committed = c
	m.next = after
	if snapshot {
		m.snapPos, m.snapGen, m.snapRing = after, m.gen, slices.Clone(m.ring)
		clear(m.snapDigests)
		m.ask(now, out, &SnapshotRequest{Position: after, Addr: m.workers[m.ring[0]].addr, Generation: m.gen})
		m.snapshotWanted = false
	}
	m.phaseSince = now
	if leave {
		// The leaving members are let go once this step's checkpoint is
		// stored (see Stored).
		m.leaveWanted = false
		for _, w := range m.workers {
			if w.leaving && w.leaveAt == leavePending {
				w.leaveAt = after.Step
			}
		}
	}
	switch {
	case m.stopWanted:
		m.phase = Holding
	case leave:
		m.startGeneration(now, out, "workers leaving")
	case hold:
		m.startGeneration(now, out, "workers joined")
	case m.done():
		m.phase = Finished
	}
	m.dismiss(out)
}

// holdNonFinite stops the run before a step whose reduced gradient (or a
// shard's log-likelihood) is not finite: applying it would make every
// replica NaN. Every member has reported by now, so the verdict is the
// current generation's, never a stale or foreign session's. The run holds
// at the step, unapplied; the held state is checkpointed (retrySave).
func (m *Machine) holdNonFinite(id string, out *Output) {
	m.stats.NonFinite++
	clear(m.reports)
	m.stopWanted = true
	m.phase = Holding
	out.Logs = append(out.Logs, fmt.Sprintf("step %d: worker %s reports a gradient or log-likelihood that is not finite; "+
		"training holds at step %d without applying it. Restart with a lower --lr or with --clip 1.", m.next.Step, id, m.next.Step))
}

// Eval handles a worker's part of an epoch's evaluation.
func (m *Machine) Eval(now time.Time, id string, e *nicepb.EvalReport) Output {
	var out Output
	if m.from(&out, id, "evaluation", e.Generation) == nil {
		return out
	}
	if m.phase == Preparing || m.phase == Idle {
		// Scores are ordered by a Start: one before it is a previous
		// generation's, however its generation number reads.
		m.refuse(&out, &m.stats.Refused.Stale, refusal("evaluation", id, "generation %d has not started (%s)", m.gen, m.phase))
		return out
	}
	if int(e.Epoch) != m.evalEpoch || m.evalEpoch == 0 {
		m.refuse(&out, &m.stats.Refused.Stale, refusal("evaluation", id, "of epoch %d; none or another is awaited", e.Epoch))
		return out
	}
	if err := checkEval(e, m.cfg.EvalN); err != nil {
		m.invalid(now, &out, id, fmt.Sprintf("evaluation of epoch %d", e.Epoch), err)
		return out
	}
	m.evals[id] = e
	for _, rid := range m.ring {
		if m.evals[rid] == nil {
			return out // a member's part is still missing
		}
	}
	var sum float64
	pos := 0
	for rank, id := range m.ring {
		r := m.evals[id]
		lo, hi := train.Shard(m.cfg.EvalN, rank, len(m.ring))
		if int(r.Lo) != lo || int(r.Hi) != hi || lo != pos {
			out.Logs = append(out.Logs, fmt.Sprintf("evaluation of epoch %d: shards do not cover the set; ignored", m.evalEpoch))
			clear(m.evals)
			return out
		}
		pos = hi
		sum += r.SumLl
	}
	ll := sum / float64(m.cfg.EvalN)
	score := &nicepb.EpochScore{Epoch: int32(m.evalEpoch), Step: int64(m.evalEpoch) * int64(m.spe), TestLl: ll,
		BitsPerDim: train.BitsPerDim(ll, 784), TrainNll: m.stats.LastTrainNLL}
	out.Scored = score
	m.evalEpoch = 0
	clear(m.evals)
	if m.phase == Finished {
		// No commit follows to carry the score into a checkpoint: take the
		// final state, live, from a member.
		m.ask(now, &out, &SnapshotRequest{Position: m.next, Addr: m.workers[m.ring[0]].addr, Generation: m.gen, Live: true})
	}
	return out
}

// RingFailure handles a worker's report that its ring broke.
func (m *Machine) RingFailure(now time.Time, id string, f *nicepb.RingFailure) Output {
	var out Output
	if m.from(&out, id, "ring failure", f.Generation) == nil {
		return out
	}
	if m.phase != Running && m.phase != Preparing {
		m.refuse(&out, &m.stats.Refused.Stale, refusal("ring failure", id, "no ring runs (%s)", m.phase))
		return out
	}
	out.Logs = append(out.Logs, fmt.Sprintf("worker %s: ring of generation %d broke (peer %q): %s", id, f.Generation, clip(f.PeerId), clip(f.Error)))
	if m.ringFailedAt.IsZero() {
		m.ringFailedAt = now
	}
	// Only a member of this ring can be blamed (a made-up id would grow
	// the map without bound).
	if f.PeerId != id && slices.Contains(m.ring, f.PeerId) {
		if m.accusers[f.PeerId] == nil {
			m.accusers[f.PeerId] = map[string]bool{}
		}
		m.accusers[f.PeerId][id] = true
	}
	return out
}

// blameBrokenRing holds to account, for a ring that broke, the member(s)
// named by the most others. A member nobody can reach is named by both of
// its neighbours, and names one of them in turn: only it is blamed, not
// the healthy neighbour that could not dial it. In a ring of two each
// names the other, and both are blamed.
func (m *Machine) blameBrokenRing() {
	most := 0
	for _, by := range m.accusers {
		most = max(most, len(by))
	}
	for id, by := range m.accusers {
		if len(by) == most {
			m.blamed[id]++
		}
	}
	clear(m.accusers)
}

// Tick advances time: starts generations after joins settle, and handles
// timeouts of preparation, steps and unconfirmed ring failures.
func (m *Machine) Tick(now time.Time) Output {
	var out Output
	for id, b := range m.benched {
		if b.until.IsZero() || now.Before(b.until) {
			continue
		}
		if m.workers[id] == nil {
			delete(m.benched, id) // gone: nothing to wait for
			continue
		}
		m.benched[id] = bench{times: b.times} // remembered until it commits a step
		m.lastJoin = now
		m.joinPending = true
		out.Logs = append(out.Logs, fmt.Sprintf("worker %s may join again", id))
	}
	switch m.phase {
	case Idle:
		if len(m.candidates(now)) >= m.cfg.MinWorkers && now.Sub(m.lastJoin) >= m.cfg.Settle {
			m.startGeneration(now, &out, "enough workers")
		}
	case Finished, Holding:
		// Bring a newcomer up to date so it holds the final state too, or
		// the state held at the step limit (but not during a shutdown).
		atLimit := m.phase == Holding && m.cfg.StopAt > 0 && m.next.Step >= m.cfg.StopAt
		if m.joinPending && now.Sub(m.lastJoin) >= m.cfg.Settle && (m.phase == Finished || atLimit) {
			m.startGeneration(now, &out, "workers joined")
			break
		}
		m.retrySave(now, &out)
	case Preparing:
		if m.cfg.PrepareTimeout > 0 && now.Sub(m.phaseSince) >= m.cfg.PrepareTimeout {
			for _, id := range m.ring {
				if w := m.workers[id]; w != nil && w.ready == nil {
					out.Logs = append(out.Logs, fmt.Sprintf("worker %s not ready after %v; dropping it", id, m.cfg.PrepareTimeout))
					out.Disconnect = append(out.Disconnect, id)
					delete(m.workers, id)
				}
			}
			m.startGeneration(now, &out, "preparation timed out")
		}
	case Running:
		if !m.ringFailedAt.IsZero() && now.Sub(m.ringFailedAt) >= m.cfg.RingGrace {
			// The blamed peer is still attached: evict a peer blamed for two
			// broken rings, else just redo the generation.
			m.blameBrokenRing()
			for id, n := range m.blamed {
				if n >= 2 && m.workers[id] != nil {
					d := m.benchWorker(now, id)
					out.Logs = append(out.Logs, fmt.Sprintf("worker %s broke the ring %d times; dropping it, and no generation takes it for %v (its peers may not reach its address %s: check --advertise and the firewall)", id, n, d, clip(m.workers[id].addr)))
					out.Disconnect = append(out.Disconnect, id)
					delete(m.workers, id)
					delete(m.blamed, id)
				}
			}
			m.abandonStep()
			m.startGeneration(now, &out, "ring broke")
			return out
		}
		if stall := cmp.Or(m.cfg.LeaveStall, 5*time.Second); m.leaveWanted && now.Sub(m.leaveSince) >= stall {
			// The commit that would hold for the leaving members is not
			// coming (a member stalls, or the ring hangs): they must not
			// give up waiting with the only copies of the state at next.
			out.Logs = append(out.Logs, fmt.Sprintf("step %d did not commit within %v of a member asking to leave; redoing it later, and saving the state at step %d now", m.next.Step, stall, m.next.Step))
			m.abandonStep()
			m.startGeneration(now, &out, "leaving members waited too long")
			return out
		}
		if m.cfg.StepTimeout > 0 && now.Sub(m.phaseSince) >= m.cfg.StepTimeout {
			var late []string
			for _, id := range m.ring {
				if m.reports[id] == nil {
					late = append(late, id)
				}
			}
			out.Logs = append(out.Logs, fmt.Sprintf("step %d timed out after %v waiting for %v; redoing it", m.next.Step, m.cfg.StepTimeout, late))
			m.abandonStep()
			m.startGeneration(now, &out, "step timed out")
		}
	}
	return out
}

// Leave handles a worker's request to be let go (it was told to stop). The
// rule: a leaving worker takes part in no new generation, and is dismissed
// once a checkpoint at or past the state it held is stored, so that
// stopping workers (docker compose down, a scale-down) loses no step. A
// member in the middle of a step finishes it: the run holds at the next
// commit, which takes a checkpoint. A worker whose state is not needed is
// dismissed at once. digest is that of the state at pos (0: not known).
func (m *Machine) Leave(now time.Time, id, reason string, pos train.Position, digest uint64) Output {
	var out Output
	w := m.workers[id]
	if w == nil || w.leaving {
		return out
	}
	if err := checkPosition("leave", statexfer.ToPB(pos), m.spe, m.cfg.Epochs); err != nil {
		m.invalid(now, &out, id, "leave", err)
		return out
	}
	w.leaving = true
	w.leftAt, w.leftDigest = pos, digest
	out.Logs = append(out.Logs, fmt.Sprintf("worker %s asks to leave at step %d (%s)", id, pos.Step, clip(reason)))
	// A Leave that crossed a commit or a fetch on the way names a state the
	// worker is about to move past.
	target := max(pos.Step, w.promised)
	switch {
	case w.member && w.synced && m.phase == Running:
		w.leaveAt = leavePending
		if !m.leaveWanted {
			m.leaveSince = now
		}
		m.leaveWanted = true
		m.snapshotWanted = true
	case target <= m.stored:
		// Nothing newer than the checkpoint.
		w.leaveAt = m.stored
	case target > pos.Step:
		// The state at next: the commit that reached it asked for its
		// snapshot, retrySave asks for it while the run holds, or it is
		// the checkpoint the coordinator serves and is still storing.
		w.leaveAt = target
	default:
		// It holds a committed state newer than the checkpoint (the state
		// at next, one whose commit it missed, or, after this coordinator
		// restarted from an older checkpoint, one its predecessor
		// committed): save it first; it may be the only copy.
		w.leaveAt = pos.Step
		if out.Snapshot == nil {
			m.ask(now, &out, &SnapshotRequest{Position: pos, Addr: w.addr, Generation: m.gen, Live: true})
		}
	}
	if w.member && m.phase == Preparing {
		m.startGeneration(now, &out, "member "+id+" leaves")
	}
	m.dismiss(&out)
	return out
}

// settleLeavers runs before a new generation forms other than by a commit
// that held for them (a member died, say): members still waiting for that
// commit are let go once the state they hold now, at next, is stored.
func (m *Machine) settleLeavers(now time.Time, out *Output) {
	var src *workerState
	for _, id := range m.Workers() {
		w := m.workers[id]
		if w.leaving && w.leaveAt == leavePending {
			w.leaveAt = m.next.Step
			if src == nil && w.synced {
				src = w
			}
		}
	}
	m.leaveWanted = false
	if src != nil {
		m.leaversAgree(out)
		m.saveLive(now, src, out)
	}
}

// leaversAgree records the replicas' agreement on the state at next when
// every member of the generation that ends asked to leave naming that state
// with one digest. No generation will form to agree on it (its members
// are leaving), yet its checkpoint must be stored before they go: their
// digests are the agreement, as their snapshots' digests are at a commit.
func (m *Machine) leaversAgree(out *Output) {
	if len(m.ring) == 0 || slices.ContainsFunc(m.agreed, func(a Agreement) bool { return a.Position == m.next }) {
		return
	}
	var d uint64
	for _, id := range m.ring {
		w := m.workers[id]
		if w == nil || !w.leaving || w.leftAt != m.next || w.leftDigest == 0 || d != 0 && w.leftDigest != d {
			return
		}
		d = w.leftDigest
	}
	m.agree(m.next, d)
	out.Logs = append(out.Logs, fmt.Sprintf("every member is leaving, all holding the state at step %d with digest %016x: storing it", m.next.Step, d))
}

// saveLive asks for a checkpoint of the live state at next from w, which
// holds it and is not training, unless one is stored already.
func (m *Machine) saveLive(now time.Time, w *workerState, out *Output) {
	if m.stored >= m.next.Step || out.Snapshot != nil {
		return
	}
	m.ask(now, out, &SnapshotRequest{Position: m.next, Addr: w.addr, Generation: m.gen, Live: true})
}

// ask puts a snapshot request into out and notes when (see retrySave).
func (m *Machine) ask(now time.Time, out *Output, r *SnapshotRequest) {
	out.Snapshot = r
	m.saveAsked = now
}

// agree records that every member holds the state at pos with digest d.
func (m *Machine) agree(pos train.Position, d uint64) {
	if i := slices.IndexFunc(m.agreed, func(a Agreement) bool { return a.Position == pos }); i >= 0 {
		m.agreed = slices.Delete(m.agreed, i, i+1)
	}
	m.agreed = append(m.agreed, Agreement{Position: pos, Digest: d})
	if n := len(m.agreed); n > keepAgreements {
		m.agreed = slices.Delete(m.agreed, 0, n-keepAgreements)
	}
}

// Snapshotted handles a member's digest of the snapshot it kept when it
// applied a commit that asked for one. Once every member named the same
// digest, the snapshot may be checkpointed; members that disagree have
// diverged, and a new generation settles on the majority's state.
func (m *Machine) Snapshotted(now time.Time, id string, sn *nicepb.Snapshotted) Output {
	var out Output
	switch pos := statexfer.FromPB(sn.Position); {
	case m.workers[id] == nil || !slices.Contains(m.snapRing, id):
		m.refuse(&out, &m.stats.Refused.NonMember, refusal("snapshot digest", id, "not a member of generation %d, which asked for the snapshot at step %d", m.snapGen, m.snapPos.Step))
		return out
	case sn.Generation != m.snapGen || pos != m.snapPos || m.snapPos.Step == 0:
		m.refuse(&out, &m.stats.Refused.Stale, refusal("snapshot digest", id, "of generation %d step %d; the newest snapshot is generation %d's at step %d", sn.Generation, pos.Step, m.snapGen, m.snapPos.Step))
		return out
	}
	m.snapDigests[id] = sn.StateDigest
	m.snapAgreement(now, &out)
	return out
}

// snapAgreement records the agreement on the snapshot at snapPos once every
// member of its generation still attached named its digest.
func (m *Machine) snapAgreement(now time.Time, out *Output) {
	if len(m.snapRing) == 0 {
		return
	}
	for _, rid := range m.snapRing {
		if _, ok := m.snapDigests[rid]; !ok {
			return
		}
	}
	first := m.snapDigests[m.snapRing[0]]
	for _, rid := range m.snapRing {
		if d := m.snapDigests[rid]; d != first {
			m.stats.DigestMismatch++
			out.Logs = append(out.Logs, fmt.Sprintf("snapshot at step %d: worker %s's digest %016x differs from %s's %016x; no checkpoint of it, and the replicas settle on the majority's state",
				m.snapPos.Step, rid, d, m.snapRing[0], first))
			clear(m.snapDigests)
			m.snapRing = nil
			if (m.phase == Running || m.phase == Preparing) && m.gen == m.snapGen {
				m.abandonStep()
				m.startGeneration(now, out, "snapshot digests differ")
			}
			return
		}
	}
	clear(m.snapDigests)
	m.agree(m.snapPos, first)
}

// Stored records that the checkpoint of the state at pos is on disk, and
// lets go the leaving workers waiting for it.
func (m *Machine) Stored(now time.Time, pos train.Position) Output {
	var out Output
	m.stored = max(m.stored, pos.Step)
	m.dismiss(&out)
	return out
}

// dismiss lets go every leaving worker whose state is stored.
func (m *Machine) dismiss(out *Output) {
	for _, id := range m.Workers() {
		w := m.workers[id]
		if !w.leaving || w.dismissed || w.leaveAt == leavePending || w.leaveAt > m.stored {
			continue
		}
		w.dismissed = true
		out.Logs = append(out.Logs, fmt.Sprintf("worker %s may leave: the checkpoint at step %d holds its state", id, max(m.stored, 0)))
		out.Sends = append(out.Sends, Send{To: id, Msg: &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Dismiss{
			Dismiss: &nicepb.Dismiss{CheckpointStep: max(m.stored, 0)}}}})
	}
}

// retrySave asks again for the checkpoint of the held state while none is
// stored: nothing else would, since no step follows.
func (m *Machine) retrySave(now time.Time, out *Output) {
	every := m.cfg.SaveRetry
	if every <= 0 {
		every = 5 * time.Second
	}
	if m.stored >= m.next.Step || m.evalEpoch > 0 || len(m.ring) == 0 || now.Sub(m.saveAsked) < every {
		return
	}
	w := m.workers[m.ring[0]]
	if w == nil || !w.synced {
		return
	}
	out.Logs = append(out.Logs, fmt.Sprintf("the state at step %d is not stored yet: asking for its checkpoint again", m.next.Step))
	m.ask(now, out, &SnapshotRequest{Position: m.next, Addr: w.addr, Generation: m.gen, Live: true})
}

// RequestSnapshot asks for a snapshot at the next commit.
func (m *Machine) RequestSnapshot() { m.snapshotWanted = true }

// RequestStop asks the workers to stop after the next commit (with a
// snapshot), for a clean shutdown.
func (m *Machine) RequestStop() {
	m.stopWanted = true
	m.snapshotWanted = true
}
