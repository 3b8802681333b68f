package coordinator

import (
	"slices"
	"sync"
	"time"
)

// History keeps what the dashboard draws: a time series of committed steps
// (bounded: when it is full, neighbouring points are merged in pairs and
// later steps are averaged in buckets twice as wide, so a long run keeps
// an even resolution over its whole length), the times of scored epochs,
// the recent checkpoints, each member's last step, and a log of events
// (bounded ring: the oldest are dropped). It is safe for concurrent use;
// its methods never block on anything but its own lock, so the server's
// goroutines can feed it while they hold theirs.
type History struct {
	mu      sync.Mutex
	limits  HistoryLimits
	version uint64 // incremented at every change the page redraws for

	points []StepPoint
	bucket int       // steps per point from now on (1, 2, 4, ...)
	pend   stepSum   // steps not yet making a full bucket
	epochs []int64   // unix ms of each epoch scored in this process, by epoch
	scored []float64 // parallel to epochs: the epoch numbers

	members     map[string]MemberStep
	checkpoints []CheckpointRecord

	events  []Event // a ring of limits.Events, oldest at head once full
	head    int
	nextSeq uint64
}

// maxMemberSteps bounds the members whose last step is kept.
const maxMemberSteps = 256

// HistoryLimits bound a History's memory.
type HistoryLimits struct {
	Points      int // step points kept before pairs are merged (even, >= 4)
	Events      int // events kept
	Checkpoints int // checkpoint records kept
}

// DefaultHistoryLimits are the server's bounds: about 200 KB of JSON at most.
func DefaultHistoryLimits() HistoryLimits {
	return HistoryLimits{Points: 1200, Events: 400, Checkpoints: 12}
}

// StepPoint is one point of the step series: the mean over Steps committed
// steps ending at Step (1 until the series was first downsampled).
type StepPoint struct {
	Step     int64   `json:"step"`  // the last step of the point (1-based: steps committed)
	UnixMs   int64   `json:"t"`     // when it was committed
	Steps    int     `json:"n"`     // committed steps averaged
	TrainNLL float64 `json:"nll"`   // nats per image
	Samples  float64 `json:"sps"`   // samples per second over the steps' wall time
	StepSec  float64 `json:"wall"`  // seconds between commits
	Compute  float64 `json:"grad"`  // mean over members, seconds
	Reduce   float64 `json:"ar"`    // all-reduce
	Wait     float64 `json:"wait"`  // commit wait (reported one step late)
	Update   float64 `json:"upd"`   // update (reported one step late)
	Workers  int     `json:"ranks"` // members in the last step
}

type stepSum struct {
	n                                             int
	last                                          StepPoint
	nll, wall, compute, reduce, wait, upd, sample float64
	walls                                         int // steps with a known wall time
}

// MemberStep is a member's last committed step as the dashboard shows it.
type MemberStep struct {
	Step    int64   `json:"step"`
	UnixMs  int64   `json:"t"`
	Seconds float64 `json:"seconds"` // gradient + all-reduce + commit wait + update
	Compute float64 `json:"grad"`
	Reduce  float64 `json:"ar"`
	Wait    float64 `json:"wait"`
	Update  float64 `json:"upd"`
}

// CheckpointRecord is one checkpoint this coordinator stored, failed to
// store, or refused.
type CheckpointRecord struct {
	Step   int64   `json:"step"`
	UnixMs int64   `json:"t"`     // when its state was captured (failures: when they failed)
	Bytes  int64   `json:"bytes"` // stored size
	Writes float64 `json:"write_seconds"`
	// Outcome: "stored" (the replicas agreed on its digest and the store
	// wrote and checksummed it), "resumed" (the checkpoint this process
	// started from, verified when loaded), "failed" (the write failed) or
	// "refused" (its digest was not the replicas').
	Outcome string `json:"outcome"`
	SHA256  string `json:"sha256,omitempty"` // the first 12 hex digits
	Error   string `json:"error,omitempty"`
}

// Event kinds.
const (
	EventGeneration = "generation"
	EventJoined     = "joined"
	EventLost       = "lost"
	EventRedone     = "redone"
	EventCheckpoint = "checkpoint"
	EventRefused    = "refused"
	EventScore      = "score"
	EventNote       = "note"
)

// Event is one line of the dashboard's log. Repeats of the previous event's
// text are counted on it instead of added.
type Event struct {
	Seq    uint64 `json:"seq"`
	UnixMs int64  `json:"t"` // the newest occurrence
	Kind   string `json:"kind"`
	Text   string `json:"text"`
	Count  int    `json:"count"`
}

// NewHistory returns an empty history with the given bounds (zero fields
// take DefaultHistoryLimits').
func NewHistory(l HistoryLimits) *History {
	d := DefaultHistoryLimits()
	if l.Points < 4 {
		l.Points = d.Points
	}
	l.Points += l.Points % 2
	if l.Events < 1 {
		l.Events = d.Events
	}
	if l.Checkpoints < 1 {
		l.Checkpoints = d.Checkpoints
	}
	return &History{limits: l, bucket: 1, members: map[string]MemberStep{}}
}

// Version changes whenever the history does.
func (h *History) Version() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.version
}

// AddStep records a committed step: its number (steps committed after it),
// the batch, the summed log-likelihood, the wall time since the previous
// commit (0: unknown) and each member's times.
func (h *History) AddStep(now time.Time, step int64, batch int, sumLL, wall float64, times []MemberTimes) {
	if batch <= 0 {
		return
	}
	ms := now.UnixMilli()
	p := StepPoint{Step: step, UnixMs: ms, Steps: 1, TrainNLL: -sumLL / float64(batch), StepSec: wall, Workers: len(times)}
	if wall > 0 {
		p.Samples = float64(batch) / wall
	}
	for _, t := range times {
		p.Compute += t.Compute / float64(len(times))
		p.Reduce += t.Allreduce / float64(len(times))
		p.Wait += t.CommitWait / float64(len(times))
		p.Update += t.Update / float64(len(times))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.version++
	for _, t := range times {
		h.members[t.Worker] = MemberStep{Step: step, UnixMs: ms, Seconds: t.Compute + t.Allreduce + t.CommitWait + t.Update,
			Compute: t.Compute, Reduce: t.Allreduce, Wait: t.CommitWait, Update: t.Update}
	}
	for len(h.members) > maxMemberSteps {
		// Workers come and go under new ids: forget the longest silent.
		oldest := ""
		for id, m := range h.members {
			if oldest == "" || m.UnixMs < h.members[oldest].UnixMs {
				oldest = id
			}
		}
		delete(h.members, oldest)
	}
	s := &h.pend
	s.n++
	s.last = p
	s.nll += finiteOr0(p.TrainNLL)
	s.compute += p.Compute
	s.reduce += p.Reduce
	s.wait += p.Wait
	s.upd += p.Update
	if wall > 0 {
		s.wall += wall
		s.sample += float64(batch)
		s.walls++
	}
	if s.n < h.bucket {
		return
	}
	h.points = append(h.points, s.point())
	h.pend = stepSum{}
	if len(h.points) >= h.limits.Points {
		h.points = halve(h.points)
		h.bucket *= 2
	}
}

// point is the mean of the steps summed.
func (s *stepSum) point() StepPoint {
	n := float64(s.n)
	p := s.last
	p.Steps = s.n
	p.TrainNLL = s.nll / n
	p.Compute, p.Reduce, p.Wait, p.Update = s.compute/n, s.reduce/n, s.wait/n, s.upd/n
	p.StepSec, p.Samples = 0, 0
	if s.walls > 0 {
		p.StepSec = s.wall / float64(s.walls)
		p.Samples = s.sample / s.wall
	}
	return p
}

// halve merges neighbouring points in pairs, weighting each by its steps.
func halve(ps []StepPoint) []StepPoint {
	out := ps[:0]
	for i := 0; i+1 < len(ps); i += 2 {
		a, b := ps[i], ps[i+1]
		wa, wb := float64(a.Steps), float64(b.Steps)
		mean := func(x, y float64) float64 { return (x*wa + y*wb) / (wa + wb) }
		m := b
		m.Steps = a.Steps + b.Steps
		m.TrainNLL = mean(a.TrainNLL, b.TrainNLL)
		m.StepSec = mean(a.StepSec, b.StepSec)
		m.Compute, m.Reduce = mean(a.Compute, b.Compute), mean(a.Reduce, b.Reduce)
		m.Wait, m.Update = mean(a.Wait, b.Wait), mean(a.Update, b.Update)
		if wall := a.StepSec*wa + b.StepSec*wb; wall > 0 && a.Samples > 0 && b.Samples > 0 {
			// Samples over the pair's whole wall time, not a mean of rates.
			m.Samples = (a.Samples*a.StepSec*wa + b.Samples*b.StepSec*wb) / wall
		} else {
			m.Samples = max(a.Samples, b.Samples)
		}
		out = append(out, m)
	}
	if len(ps)%2 == 1 {
		out = append(out, ps[len(ps)-1])
	}
	return slices.Clip(out)
}

// AddScore records when an epoch was scored (and logs it).
func (h *History) AddScore(now time.Time, epoch int, text string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i := slices.Index(h.scored, float64(epoch)); i >= 0 {
		h.epochs[i] = now.UnixMilli()
	} else {
		h.scored = append(h.scored, float64(epoch))
		h.epochs = append(h.epochs, now.UnixMilli())
		if len(h.scored) > 4*h.limits.Points { // far beyond any run's epochs
			h.scored, h.epochs = h.scored[1:], h.epochs[1:]
		}
	}
	h.addEvent(now, EventScore, text)
}

// AddCheckpoint records a checkpoint's outcome (and logs it).
func (h *History) AddCheckpoint(now time.Time, r CheckpointRecord, text string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// A step stored again (a retry after a failure) replaces its record.
	h.checkpoints = slices.DeleteFunc(h.checkpoints, func(c CheckpointRecord) bool { return c.Step == r.Step && c.Outcome == r.Outcome })
	h.checkpoints = append(h.checkpoints, r)
	if n := len(h.checkpoints) - h.limits.Checkpoints; n > 0 {
		h.checkpoints = slices.Delete(h.checkpoints, 0, n)
	}
	if text != "" {
		h.addEvent(now, EventCheckpoint, text)
	} else {
		h.version++
	}
}

// AddEvent logs an event.
func (h *History) AddEvent(now time.Time, kind, text string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addEvent(now, kind, text)
}

func (h *History) addEvent(now time.Time, kind, text string) {
	h.version++
	if n := len(h.events); n > 0 {
		last := &h.events[(h.head+n-1)%n] // head is 0 until the ring is full
		if last.Kind == kind && last.Text == text {
			last.Count++
			last.UnixMs = now.UnixMilli()
			return
		}
	}
	h.nextSeq++
	e := Event{Seq: h.nextSeq, UnixMs: now.UnixMilli(), Kind: kind, Text: text, Count: 1}
	if len(h.events) < h.limits.Events {
		h.events = append(h.events, e)
		return
	}
	h.events[h.head] = e
	h.head = (h.head + 1) % len(h.events)
}

// HistoryView is the history as /api/history serves it.
type HistoryView struct {
	Version     uint64                `json:"version"`
	Bucket      int                   `json:"bucket"` // steps per point of the newest points
	Points      []StepPoint           `json:"points"`
	EpochTimes  map[int]int64         `json:"epoch_times"` // unix ms when each epoch was scored, if in this process
	Members     map[string]MemberStep `json:"members"`
	Checkpoints []CheckpointRecord    `json:"checkpoints"`
	Events      []Event               `json:"events"` // oldest first
}

// View copies the history. The steps of an incomplete bucket show as its
// newest point, so the curves move at every step.
func (h *History) View() HistoryView {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := HistoryView{Version: h.version, Bucket: h.bucket, Points: slices.Clone(h.points),
		EpochTimes: make(map[int]int64, len(h.scored)), Members: make(map[string]MemberStep, len(h.members)),
		Checkpoints: slices.Clone(h.checkpoints), Events: make([]Event, 0, len(h.events))}
	if v.Points == nil {
		v.Points = []StepPoint{}
	}
	if h.pend.n > 0 {
		v.Points = append(v.Points, h.pend.point())
	}
	for i, e := range h.scored {
		v.EpochTimes[int(e)] = h.epochs[i]
	}
	for id, m := range h.members {
		v.Members[id] = m
	}
	if v.Checkpoints == nil {
		v.Checkpoints = []CheckpointRecord{}
	}
	n := len(h.events)
	for i := range n {
		v.Events = append(v.Events, h.events[(h.head+i)%n])
	}
	return v
}
