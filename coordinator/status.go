package coordinator

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nice-flow/nice/train"
)

// Status is what `nice-coord status` shows, as JSON.
type Status struct {
	Phase         string         `json:"phase"`
	Generation    uint64         `json:"generation"`
	Epoch         int            `json:"epoch"` // 1-based epoch of the next step
	Epochs        int            `json:"epochs"`
	Step          int64          `json:"step"` // steps committed in all
	StepInEpoch   int            `json:"step_in_epoch"`
	StepsPerEpoch int            `json:"steps_per_epoch"`
	Ring          []string       `json:"ring"`
	Workers       []WorkerStatus `json:"workers"`

	// StepsTotal is epochs × steps per epoch. ETASeconds is the time until
	// every epoch is trained and scored, at the speed of recent steady
	// training (pauses while a generation restarts do not count, nor does a
	// hold); 0 when unknown (before two commits of one generation) and when
	// nothing is left. SecondsPerStep is the mean step time it is computed
	// from (0 while unknown).
	StepsTotal     int64     `json:"steps_total"`
	ETASeconds     float64   `json:"eta_seconds"`
	SecondsPerStep float64   `json:"seconds_per_step"`
	clock          stepClock // the commits the ETA is estimated from

	SamplesPerSec float64 `json:"samples_per_sec"`
	TrainNLL      float64 `json:"train_nll"`
	TestLL        float64 `json:"test_ll"`
	BitsPerDim    float64 `json:"bits_per_dim"`
	BusBW         float64 `json:"allreduce_busbw_GBps"`

	LastCheckpointStep         int64   `json:"last_checkpoint_step"`
	LastCheckpointAgeSeconds   float64 `json:"last_checkpoint_age_seconds"`
	LastCheckpointWriteSeconds float64 `json:"last_checkpoint_write_seconds"`
	LastCheckpointBytes        int64   `json:"last_checkpoint_bytes"`
	LastSnapshotFetchSeconds   float64 `json:"last_snapshot_fetch_seconds"`
	lastCheckpointTime         time.Time
	// LastCheckpointError is the newest failed checkpoint write (a full
	// disk, say); it stays until a checkpoint at or after its step is
	// stored. null when writes succeed.
	LastCheckpointError *Problem `json:"last_checkpoint_error"`
	// LedgerError is the newest failed write or sync of the ledger file; it
	// stays until everything the ledger holds is written and synced. (It is
	// about the file; ledger_errors counts commits whose shards did not
	// partition the batch.) null when the ledger is written.
	LedgerError *Problem `json:"ledger_error"`
	// LedgerLinesLost counts ledger lines given up because the file took
	// nothing for so long that the lines waiting outgrew their memory bound.
	LedgerLinesLost int64 `json:"ledger_lines_lost"`
	// Health is "ok", or "degraded: " and the problems (as GET /healthz).
	Health string `json:"health"`

	CommittedSteps   int64 `json:"committed_steps"`
	RedoneSteps      int64 `json:"redone_steps"`
	Generations      int64 `json:"generations"`
	LedgerOK         bool  `json:"ledger_ok"`
	LedgerErrors     int64 `json:"ledger_errors"`
	DigestsAgree     bool  `json:"digests_agree"`
	DigestMismatches int64 `json:"digest_mismatches"`
	NonFiniteSteps   int64 `json:"non_finite_steps"`
	// CheckpointsRefused counts fetched states whose digest was not the
	// one the replicas agreed on: they were not stored.
	CheckpointsRefused int64 `json:"checkpoints_refused"`

	// Refused counts the workers' messages refused at the edge, by reason;
	// LastRefused is the newest refusal's error (stale messages, routine
	// after a failure, are counted but not shown there).
	Refused     Refusals `json:"refused_messages"`
	LastRefused string   `json:"last_refused,omitempty"`
	hellos      int64    // sessions refused at their Hello (server side)
	seenRefusal string   // the machine's LastRefused when last copied

	Scores      []train.EpochResult `json:"scores"`
	ConfigHash  string              `json:"config_hash"`
	Incarnation uint64              `json:"incarnation"`
}

// Problem is a failure that stands until a later success clears it.
// Problems are never modified once made (Status shares them).
type Problem struct {
	Error    string    `json:"error"`
	Step     int64     `json:"step"`     // the checkpoint's step, or the ledger line's
	Since    time.Time `json:"since"`    // the first failure since the last success
	Time     time.Time `json:"time"`     // the newest failure
	Failures int       `json:"failures"` // failures since the last success
}

// again returns the problem p (nil: none yet) after one more failure.
func (p *Problem) again(step int64, err error, now time.Time) *Problem {
	next := &Problem{Error: err.Error(), Step: step, Since: now, Time: now, Failures: 1}
	if p != nil {
		next.Since, next.Failures = p.Since, p.Failures+1
	}
	return next
}

// Problems describes what makes the coordinator degraded, one sentence
// each; none means healthy.
func (st *Status) Problems() []string {
	var out []string
	if p := st.LastCheckpointError; p != nil {
		stands := "no checkpoint is stored yet"
		if st.LastCheckpointStep > 0 || st.LastCheckpointAgeSeconds > 0 {
			stands = fmt.Sprintf("the checkpoint at step %d stands", st.LastCheckpointStep)
		}
		out = append(out, fmt.Sprintf("checkpoint writes fail: the checkpoint at step %d was not written (%s); %s; "+
			"failures: %d since %s; free space in the state folder or fix the error, and the next checkpoint clears this",
			p.Step, p.Error, stands, p.Failures, p.Since.UTC().Format(time.RFC3339)))
	}
	if p := st.LedgerError; p != nil {
		out = append(out, fmt.Sprintf("ledger writes fail: the line of step %d is not on disk (%s); "+
			"failures: %d since %s; the lines not written wait in memory for the file to take them",
			p.Step, p.Error, p.Failures, p.Since.UTC().Format(time.RFC3339)))
	}
	return out
}

// WorkerStatus is one attached worker.
type WorkerStatus struct {
	ID     string `json:"id"`
	Addr   string `json:"addr"`
	State  string `json:"state"`  // a MemberState: "training", "preparing", "waiting", "leaving"
	Rank   int    `json:"rank"`   // -1 when not in the ring
	Gossip string `json:"gossip"` // "alive", "suspect" (a probe went unanswered), "not seen", "unknown" (no gossip)
}

// Status returns the current status.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Workers = append([]WorkerStatus(nil), st.Workers...)
	st.Ring = append([]string(nil), st.Ring...)
	st.Scores = append([]train.EpochResult(nil), s.scores...)
	if n := len(st.Scores); n > 0 {
		st.TestLL = st.Scores[n-1].TestLL
		st.BitsPerDim = st.Scores[n-1].BitsPerDim
	}
	if !st.lastCheckpointTime.IsZero() {
		st.LastCheckpointAgeSeconds = time.Since(st.lastCheckpointTime).Seconds()
	}
	st.Health = "ok"
	if p := st.Problems(); len(p) > 0 {
		st.Health = "degraded: " + strings.Join(p, "; ")
	}
	return st
}

// updateStatus copies the loop's view into the status (loop goroutine only).
func (s *Server) updateStatus() {
	v := s.m.View()
	alive := map[string]string{}
	if s.gossip != nil {
		for _, mem := range s.gossip.Members() {
			if mem.Meta.WorkerID != "" {
				alive[mem.Meta.WorkerID] = mem.State.String() // "alive" or "suspect"
			}
		}
	}
	ws := make([]WorkerStatus, 0, len(v.Members))
	for _, mv := range v.Members {
		g := alive[mv.ID]
		if g == "" {
			g = "unknown"
			if s.gossip != nil {
				g = "not seen"
			}
		}
		ws = append(ws, WorkerStatus{ID: mv.ID, Addr: mv.Addr, State: string(mv.State), Rank: mv.Rank, Gossip: g})
	}
	next := v.Next
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Equal(s.agreed, v.Agreed) {
		s.agreed = v.Agreed
		close(s.agreedChanged)
		s.agreedChanged = make(chan struct{})
	}
	st := &s.status
	st.Phase = string(v.Phase)
	st.Generation = v.Generation
	st.Epoch = next.Epoch + 1
	st.Epochs = s.cfg.Train.Epochs
	st.Step = next.Step
	st.StepInEpoch = next.StepInEpoch
	st.StepsPerEpoch = v.StepsPerEpoch
	st.StepsTotal = int64(st.Epochs) * int64(st.StepsPerEpoch)
	st.clock.observe(v.Stats.Committed, v.Stats.LastCommit, next, v.Generation, len(v.Ring))
	st.SecondsPerStep = st.clock.secondsPerStep()
	st.ETASeconds = st.clock.eta(time.Now(), st.StepsPerEpoch, st.Epochs, scoredEpochs(s.scores, st.Epochs))
	st.Ring = v.Ring
	st.Workers = ws
	st.CommittedSteps = v.Stats.Committed
	st.RedoneSteps = v.Stats.Redone
	st.Generations = v.Stats.Generations
	st.LedgerErrors = v.Stats.LedgerErrors
	st.LedgerOK = v.Stats.LedgerErrors == 0
	st.DigestMismatches = v.Stats.DigestMismatch
	st.DigestsAgree = v.Stats.DigestMismatch == 0
	st.NonFiniteSteps = v.Stats.NonFinite
	st.Refused = v.Stats.Refused
	st.Refused.Hello = st.hellos
	if v.Stats.LastRefused != st.seenRefusal {
		st.LastRefused, st.seenRefusal = v.Stats.LastRefused, v.Stats.LastRefused
	}
	st.ConfigHash = s.cfg.Train.Hash()
	st.Incarnation = s.incarnation
}

// scoredEpochs counts the epochs 1..epochs that have their score.
func scoredEpochs(scores []train.EpochResult, epochs int) int {
	n := 0
	for _, r := range scores {
		if r.Epoch >= 1 && r.Epoch <= epochs {
			n++
		}
	}
	return n
}

// refusedHello counts a session refused at its first message.
func (s *Server) refusedHello(err error) {
	s.log.Warn("refused a session", "err", err)
	s.dash.hist.AddEvent(time.Now(), EventRefused, "refused a session: "+err.Error())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.hellos++
	s.status.Refused.Hello = s.status.hellos
	s.status.LastRefused = "session: " + err.Error()
}
