package sim

import (
	"fmt"
	"time"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/worker"
)

// session is one worker's Session stream with the coordinator: ordered and
// reliable in each direction while open; cut, it loses what is in flight,
// and each end notices after its own delay (a reset, or a keepalive).
type session struct {
	s        *sim
	id       int
	w        *workerProc
	coordInc int
	open     bool
	lastToW  time.Time
	lastToC  time.Time
}

func (ss *session) delay(slow bool) time.Duration {
	s := ss.s
	d := s.dur(0, 3*time.Millisecond)
	if s.rng.IntN(20) == 0 {
		d = s.dur(10*time.Millisecond, 300*time.Millisecond) // a late message
	}
	if slow {
		d += s.dur(100*time.Millisecond, time.Second)
	}
	return d
}

// toWorker sends msg (nil: the Welcome) to the worker, after every message
// sent before it on this session.
func (ss *session) toWorker(msg *nicepb.CoordinatorMessage) {
	s := ss.s
	at := s.now.Add(ss.delay(ss.w.slowUntil.After(s.now)))
	if !at.After(ss.lastToW) {
		at = ss.lastToW.Add(time.Nanosecond)
	}
	ss.lastToW = at
	desc := "welcome"
	if msg != nil {
		desc = fmt.Sprintf("%T", msg.Kind)
	}
	ss.w.later(at.Sub(s.now), fmt.Sprintf("coordinator -> %s: %s (session %d)", ss.w.id, desc, ss.id), func() {
		if !ss.open {
			return
		}
		if msg == nil {
			ss.w.welcome(ss)
			return
		}
		ss.w.receive(ss, msg)
	})
}

// toCoordinator sends msg to the coordinator.
func (ss *session) toCoordinator(msg *nicepb.WorkerMessage) {
	s := ss.s
	at := s.now.Add(ss.delay(false))
	if !at.After(ss.lastToC) {
		at = ss.lastToC.Add(time.Nanosecond)
	}
	ss.lastToC = at
	s.at(at.Sub(s.now), fmt.Sprintf("%s -> coordinator: %T (session %d)", ss.w.id, msg.Kind, ss.id), func() {
		if ss.open && s.coord.up && s.coord.inc == ss.coordInc {
			s.coord.receive(ss, msg)
		}
	})
}

// cut breaks the session: in-flight messages are lost, and each end
// notices after a while.
func (ss *session) cut(why string) {
	if !ss.open {
		return
	}
	ss.open = false
	s := ss.s
	inc := ss.coordInc
	s.at(s.dur(0, 3*time.Second), fmt.Sprintf("coordinator notices session %d of %s ended (%s)", ss.id, ss.w.id, why), func() {
		if s.coord.up && s.coord.inc == inc {
			s.coord.detach(ss, why)
		}
	})
	ss.w.later(s.dur(0, 3*time.Second), fmt.Sprintf("%s notices session %d ended (%s)", ss.w.id, ss.id, why), func() {
		ss.w.detached(ss)
	})
}

// collKey names one all-reduce: a generation and the how-manyth collective
// of that generation.
type collKey struct {
	gen uint64
	seq int
}

// collective is one all-reduce in progress.
type collective struct {
	size    int
	total   uint64
	joined  map[int]*waiter // by rank
	broken  bool
	started time.Time
}

type waiter struct {
	w   *workerProc
	tok int
	r   worker.ComputeResult
}

// join enters w's gradient g into the collective of its generation; when
// every rank has joined, each gets the sum; if the collective breaks (a
// member leaves, dies, moves to another generation, or it times out),
// each gets an error.
func (s *sim) join(w *workerProc, o worker.ComputeOrder, g uint64, r worker.ComputeResult) {
	if w.collSeq == nil {
		w.collSeq = map[uint64]int{}
	}
	key := collKey{o.Generation, w.collSeq[o.Generation]}
	w.collSeq[o.Generation]++
	c := s.colls[key]
	if c == nil {
		c = &collective{size: o.Size, joined: map[int]*waiter{}, started: s.now}
		s.colls[key] = c
		s.at(30*time.Second, "tick", func() {
			if len(c.joined) < c.size && !c.broken {
				s.breakColl(key, c, "timeout")
			}
		})
	}
	if c.broken || c.size != o.Size || c.joined[o.Rank] != nil {
		r.Err = fmt.Errorf("all-reduce %v: broken", key)
		tok := w.token
		w.later(s.dur(0, 10*time.Millisecond), w.id+" all-reduce fails", func() { w.finishCompute(tok, r, 0) })
		return
	}
	c.joined[o.Rank] = &waiter{w: w, tok: w.token, r: r}
	c.total += g
	if len(c.joined) < c.size {
		return
	}
	delete(s.colls, key)
	for rank := range c.size {
		wt := c.joined[rank]
		wt.w.later(s.dur(time.Millisecond, 15*time.Millisecond), fmt.Sprintf("%s all-reduce %v done", wt.w.id, key), func() {
			wt.w.finishCompute(wt.tok, wt.r, c.total)
		})
	}
}

// breakColl fails a collective for everyone in it.
func (s *sim) breakColl(key collKey, c *collective, why string) {
	c.broken = true
	for rank := range c.size {
		wt := c.joined[rank]
		if wt == nil {
			continue
		}
		wt.r.Err = fmt.Errorf("all-reduce %v broken: %s", key, why)
		wt.w.later(s.dur(0, 200*time.Millisecond), fmt.Sprintf("%s all-reduce %v broken", wt.w.id, key), func() {
			wt.w.finishCompute(wt.tok, wt.r, 0)
		})
	}
	c.joined = map[int]*waiter{}
}

// leaveCollectives breaks the collectives w is in or would join: those it
// waits in and those of its current generation (its process died or its
// work was cancelled, so its streams break).
func (w *workerProc) leaveCollectives() {
	s := w.s
	for _, key := range s.collKeys() {
		c := s.colls[key]
		in := key.gen == w.ringGen
		for _, wt := range c.joined {
			in = in || wt.w == w
		}
		if in && !c.broken {
			s.breakColl(key, c, w.id+" left")
		}
	}
}

// breakOlder breaks every collective of a generation before gen: a member
// moved on to gen, which retires the streams of the older ones.
func (s *sim) breakOlder(gen uint64) {
	for _, key := range s.collKeys() {
		if c := s.colls[key]; key.gen < gen && !c.broken {
			s.breakColl(key, c, fmt.Sprintf("a member moved on to generation %d", gen))
		}
	}
}

// collKeys lists the collectives in a fixed order (map order would make
// runs differ for one seed).
func (s *sim) collKeys() []collKey {
	keys := make([]collKey, 0, len(s.colls))
	for k := range s.colls {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && (keys[j].gen < keys[j-1].gen || keys[j].gen == keys[j-1].gen && keys[j].seq < keys[j-1].seq); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// othersHold reports whether another live worker holds a state at or past
// w's.
func (s *sim) othersHold(w *workerProc) bool {
	for _, x := range s.workers {
		if x != w && x.alive && x.st.pos.Step >= w.st.pos.Step {
			return true
		}
	}
	return false
}
