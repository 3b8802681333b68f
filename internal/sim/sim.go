package sim

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// Options choose one simulated run.
type Options struct {
	// Seed fixes every choice of the run.
	Seed uint64
	// Faults is how many faults are injected (default: 0..12, by seed).
	Faults int
	// FaultWindow is the stretch of simulated time in which faults happen
	// (default 20 s).
	FaultWindow time.Duration
	// Horizon bounds the simulated time of the run: a run that has not
	// finished by then has stalled (default 15 min).
	Horizon time.Duration
	// Trace keeps this many of the newest events for the failure report
	// (default 60).
	Trace int
}

// Result is what a run did.
type Result struct {
	Seed       uint64
	Workers    int
	Faults     []string
	Events     int
	SimTime    time.Duration
	Committed  int
	Redone     int64
	Violations []string
	// Trace is the tail of the event log (kept on violations only).
	Trace []string
}

// Run simulates one seeded run and checks the invariants after every event.
func Run(o Options) Result {
	s := newSim(o)
	s.run()
	r := Result{Seed: o.Seed, Workers: s.initialWorkers, Faults: s.faultLog, Events: s.events,
		SimTime: s.now.Sub(epoch0), Committed: len(s.commits), Violations: s.violations}
	if s.coord.m != nil {
		r.Redone = s.coord.m.View().Stats.Redone
	}
	if len(s.violations) > 0 {
		r.Trace = s.trace.list()
	}
	return r
}

var epoch0 = time.Unix(1_800_000_000, 0)

// sim is one run: the scheduler, the processes and the record.
type sim struct {
	o   Options
	rng *rand.Rand
	now time.Time
	q   eventQueue
	seq uint64

	model model
	mcfg  coordinator.MachineConfig

	coord   *coordProc
	workers map[string]*workerProc // the newest process of each id
	nextInc uint64
	nextSID int
	colls   map[collKey]*collective

	initialWorkers int
	faultLog       []string
	events         int
	commits        []*coordinator.Commit
	scored         map[int]float64
	violations     []string
	trace          ring
	finished       bool
}

type event struct {
	at   time.Time
	seq  uint64
	desc string
	fn   func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// ring keeps the newest n lines.
type ring struct {
	lines []string
	next  int
	n     int
}

func (r *ring) add(l string) {
	if r.n == 0 {
		return
	}
	if len(r.lines) < r.n {
		r.lines = append(r.lines, l)
		return
	}
	r.lines[r.next] = l
	r.next = (r.next + 1) % r.n
}

func (r *ring) list() []string {
	return append(append([]string(nil), r.lines[r.next:]...), r.lines[:r.next]...)
}

func newSim(o Options) *sim {
	if o.FaultWindow == 0 {
		o.FaultWindow = 20 * time.Second
	}
	if o.Horizon == 0 {
		o.Horizon = 15 * time.Minute
	}
	if o.Trace == 0 {
		o.Trace = 60
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x6e696365))
	if o.Faults == 0 {
		o.Faults = rng.IntN(13)
	}
	s := &sim{o: o, rng: rng, now: epoch0, workers: map[string]*workerProc{}, colls: map[collKey]*collective{},
		scored: map[int]float64{}, trace: ring{n: o.Trace}}
	// A small run: 3 epochs of 5 to 7 steps, the last step of each epoch
	// short, and an evaluation set split across the ranks.
	trainN := 30 + rng.IntN(20)
	s.model = newModel(trainN, 6+rng.IntN(3), 3, 10+rng.IntN(7), o.Seed)
	s.mcfg = coordinator.MachineConfig{
		MinWorkers:      1,
		Settle:          500 * time.Millisecond,
		PrepareTimeout:  10 * time.Second,
		StepTimeout:     10 * time.Second,
		RingGrace:       1500 * time.Millisecond,
		TrainN:          s.model.trainN,
		EvalN:           s.model.evalN,
		Batch:           s.model.batch,
		Epochs:          s.model.epochs,
		CheckpointEvery: rng.IntN(4),
		DigestEvery:     1 + rng.IntN(3),
	}
	s.coord = &coordProc{s: s, store: stored{pos: train.Position{}, value: s.model.canon[0], ok: false}}
	return s
}

func (s *sim) at(d time.Duration, desc string, fn func()) {
	s.seq++
	heap.Push(&s.q, &event{at: s.now.Add(d), seq: s.seq, desc: desc, fn: fn})
}

func (s *sim) dur(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

func (s *sim) violate(format string, args ...any) {
	msg := fmt.Sprintf("t=%v: ", s.now.Sub(epoch0)) + fmt.Sprintf(format, args...)
	s.violations = append(s.violations, msg)
	s.trace.add("VIOLATION " + msg)
}

func (s *sim) log(format string, args ...any) {
	if s.trace.n > 0 {
		s.trace.add(fmt.Sprintf("%9.3fs ", s.now.Sub(epoch0).Seconds()) + fmt.Sprintf(format, args...))
	}
}

func (s *sim) run() {
	s.coord.start()
	n := 1 + s.rng.IntN(4)
	s.initialWorkers = n
	for i := 1; i <= n; i++ {
		s.startWorker(fmt.Sprintf("w%d", i), s.dur(0, 300*time.Millisecond))
	}
	for range s.o.Faults {
		s.at(s.dur(0, s.o.FaultWindow), "fault", s.fault)
	}
	// Once the faults are over, whatever is down comes back, so that the
	// run can finish.
	s.at(s.o.FaultWindow+30*time.Second, "heal", s.heal)
	s.tick()
	end := epoch0.Add(s.o.Horizon)
	for s.q.Len() > 0 && len(s.violations) == 0 {
		e := heap.Pop(&s.q).(*event)
		if e.at.After(end) {
			break
		}
		s.now = e.at
		s.events++
		if e.desc != "tick" {
			s.log("%s", e.desc)
		}
		e.fn()
		s.check()
		if s.finished {
			break
		}
	}
	if !s.finished && len(s.violations) == 0 {
		v := s.coord.m.View()
		s.violate("the run did not finish within %v of simulated time: phase %s at step %d of %d, members %v; stored checkpoint at step %d (%v); epochs scored %v",
			s.o.Horizon, v.Phase, v.Next.Step, s.model.total(), v.Members, s.coord.store.pos.Step, s.coord.store.ok, s.scored)
	}
}

// tick drives both kinds of machines' clocks every 100 ms.
func (s *sim) tick() {
	s.at(100*time.Millisecond, "tick", func() {
		s.coord.tick()
		for _, id := range s.ids() {
			if w := s.workers[id]; w.alive {
				w.tick()
			}
		}
		s.tick()
	})
}

func (s *sim) ids() []string {
	ids := make([]string, 0, len(s.workers))
	for id := range s.workers {
		ids = append(ids, id)
	}
	sortStrings(ids)
	return ids
}

func sortStrings(a []string) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// startWorker starts a fresh process of worker id after d.
func (s *sim) startWorker(id string, d time.Duration) {
	s.at(d, "start "+id, func() {
		if old := s.workers[id]; old != nil && old.alive {
			return
		}
		s.nextInc++
		w := &workerProc{s: s, id: id, addr: id + ":7100", inc: s.nextInc, alive: true,
			m:  worker.NewMachine(worker.MachineConfig{DigestEvery: s.mcfg.DigestEvery, FetchRetryMin: 100 * time.Millisecond, FetchRetryMax: time.Second}),
			st: trainerState{value: s.model.canon[0]}}
		s.workers[id] = w
		w.connect(0)
	})
}

// fault injects one random fault.
func (s *sim) fault() {
	ids := s.ids()
	var alive []*workerProc
	for _, id := range ids {
		if w := s.workers[id]; w.alive {
			alive = append(alive, w)
		}
	}
	pick := func() *workerProc {
		if len(alive) == 0 {
			return nil
		}
		return alive[s.rng.IntN(len(alive))]
	}
	note := func(f string, args ...any) {
		d := fmt.Sprintf("%.2fs ", s.now.Sub(epoch0).Seconds()) + fmt.Sprintf(f, args...)
		s.faultLog = append(s.faultLog, d)
		s.log("FAULT %s", d)
	}
	switch k := s.rng.IntN(100); {
	case k < 22:
		if w := pick(); w != nil {
			back := s.dur(100*time.Millisecond, 5*time.Second)
			note("kill %s (back in %v)", w.id, back)
			w.die("killed")
			s.startWorker(w.id, back)
		}
	case k < 34:
		if w := pick(); w != nil {
			d := s.dur(200*time.Millisecond, 8*time.Second)
			note("freeze %s for %v", w.id, d)
			w.freeze(d)
		}
	case k < 48:
		if w := pick(); w != nil && w.sess != nil {
			note("cut the session of %s", w.id)
			w.sess.cut("network cut")
		}
	case k < 58:
		if w := pick(); w != nil {
			note("stop %s gracefully (SIGTERM)", w.id)
			w.stop()
		}
	case k < 66:
		id := fmt.Sprintf("w%d", len(ids)+1)
		note("scale up: start %s", id)
		s.startWorker(id, 0)
	case k < 78:
		back := s.dur(100*time.Millisecond, 5*time.Second)
		note("kill the coordinator (back in %v)", back)
		s.coord.die()
		s.at(back, "coordinator restarts", s.coord.start)
	case k < 84:
		note("checkpoint writes fail for a while")
		s.coord.diskFull = true
		s.at(s.dur(time.Second, 10*time.Second), "disk usable again", func() { s.coord.diskFull = false })
	case k < 92:
		note("compose down: stop every worker gracefully, then the coordinator; up again")
		s.down()
	default:
		if w := pick(); w != nil {
			note("slow messages to %s", w.id)
			w.slowUntil = s.now.Add(s.dur(time.Second, 5*time.Second))
		}
	}
}

// down stops every worker gracefully; once all are gone the coordinator is
// restarted, and the step it resumes at must be the step training reached.
func (s *sim) down() {
	var stopping []*workerProc
	for _, id := range s.ids() {
		if w := s.workers[id]; w.alive {
			w.stop()
			stopping = append(stopping, w)
		}
	}
	var wait func()
	wait = func() {
		for _, w := range stopping {
			if w.alive {
				s.at(50*time.Millisecond, "down: waiting for workers to exit", wait)
				return
			}
		}
		reached := int64(-1)
		clean := true
		for _, w := range stopping {
			reached = max(reached, w.exitPos.Step)
			clean = clean && w.dismissed
		}
		if !s.coord.up {
			return
		}
		s.coord.die()
		s.coord.start()
		if clean && len(stopping) > 0 && s.coord.store.pos.Step < reached {
			s.violate("down then up: every worker was dismissed, training reached step %d, the coordinator resumes at step %d",
				reached, s.coord.store.pos.Step)
		}
		for _, w := range stopping {
			s.startWorker(w.id, s.dur(100*time.Millisecond, 2*time.Second))
		}
	}
	s.at(50*time.Millisecond, "down: waiting for workers to exit", wait)
}

// heal brings back whatever is down at the end of the fault window.
func (s *sim) heal() {
	if !s.coord.up {
		s.coord.start()
	}
	s.coord.diskFull = false
	alive := 0
	for _, id := range s.ids() {
		w := s.workers[id]
		if w.alive {
			alive++
			w.frozenUntil = time.Time{}
		} else {
			s.startWorker(id, 0)
			alive++
		}
	}
	if alive == 0 {
		s.startWorker("w1", 0)
	}
}

// stored is a checkpoint on the simulated disk.
type stored struct {
	pos    train.Position
	value  uint64
	ok     bool
	scored map[int]bool // the epochs whose score the checkpoint's history holds
}
