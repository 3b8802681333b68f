package membership

import "sync"

// eventQueue decouples gossip, which must never block, from a consumer that
// may be slow. It is unbounded, but an update for a member whose latest
// queued event is a join or update is merged into that event, so a member
// that keeps changing its metadata cannot grow it without bound.
type eventQueue struct {
	out     chan Event
	notify  chan struct{}
	done    chan struct{}
	stopped chan struct{}

	mu      sync.Mutex
	pending []Event
	closed  bool
}

func newEventQueue() *eventQueue {
	q := &eventQueue{
		out:     make(chan Event),
		notify:  make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go q.pump()
	return q
}

// push queues e without blocking.
func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	merged := false
	if e.Kind == EventUpdate {
		for i := len(q.pending) - 1; i >= 0; i-- {
			p := &q.pending[i]
			if p.Member.Name != e.Member.Name {
				continue
			}
			if p.Kind == EventJoin || p.Kind == EventUpdate {
				p.Member = e.Member // a join keeps its kind, with the newer metadata
				merged = true
			}
			break
		}
	}
	if !merged {
		q.pending = append(q.pending, e)
	}
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *eventQueue) pump() {
	defer close(q.stopped)
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.mu.Unlock()
			select {
			case <-q.notify:
				continue
			case <-q.done:
				return
			}
		}
		// Taken off the queue before sending, so a later update cannot merge
		// into an event the consumer may already hold.
		e := q.pending[0]
		q.pending[0] = Event{}
		q.pending = q.pending[1:]
		q.mu.Unlock()
		select {
		case q.out <- e:
		case <-q.done:
			return
		}
	}
}

// close stops delivery, drops what is still queued and closes out.
func (q *eventQueue) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	q.pending = nil
	q.mu.Unlock()
	close(q.done)
	<-q.stopped
	close(q.out)
}
