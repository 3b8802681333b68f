package ring

import (
	"context"
	"fmt"
	"sync"
)

// offer is an incoming stream announced to a transport and waiting for the
// member's Accept.
type offer struct {
	id     StreamID
	refuse func(error) // ends the stream, telling the dialer why
	link   any         // the transport's end of the stream
}

// acceptQueue pairs announced streams with Accept calls, for both
// transports: it refuses streams of generations older than the newest one
// accepted, and streams of that generation from the wrong peer.
type acceptQueue struct {
	mu      sync.Mutex
	down    error
	newest  uint64
	pending map[*offer]struct{}
	changed chan struct{} // closed and replaced when pending grows
}

func newAcceptQueue() *acceptQueue {
	return &acceptQueue{pending: make(map[*offer]struct{}), changed: make(chan struct{})}
}

func (q *acceptQueue) offer(o *offer) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.down != nil {
		return q.down
	}
	if o.id.Generation < q.newest {
		return &FrameError{Field: "generation", Got: o.id.Generation, Want: q.newest, Kind: ErrStaleGeneration}
	}
	q.pending[o] = struct{}{}
	close(q.changed)
	q.changed = make(chan struct{})
	return nil
}

// withdraw forgets an offer whose dialer went away.
func (q *acceptQueue) withdraw(o *offer) {
	q.mu.Lock()
	delete(q.pending, o)
	q.mu.Unlock()
}

func (q *acceptQueue) accept(ctx context.Context, id StreamID) (*offer, error) {
	for {
		q.mu.Lock()
		if q.down != nil {
			err := q.down
			q.mu.Unlock()
			return nil, fmt.Errorf("accepting from %s: %w", id.From, err)
		}
		q.newest = max(q.newest, id.Generation)
		var found *offer
		var refused []*offer
		for o := range q.pending {
			switch err := id.match(o.id); {
			case err == nil && found == nil:
				found = o
				delete(q.pending, o)
			case o.id.Generation < q.newest || (err != nil && o.id.Generation == id.Generation):
				refused = append(refused, o)
				delete(q.pending, o)
			}
		}
		changed := q.changed
		q.mu.Unlock()
		for _, o := range refused {
			o.refuse(fmt.Errorf("refused by %s: %w", id.To, id.match(o.id)))
		}
		if found != nil {
			return found, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("accepting from %s: %w", id.From, context.Cause(ctx))
		}
	}
}

func (q *acceptQueue) shutdown(cause error) {
	q.mu.Lock()
	if q.down == nil {
		q.down = cause
	}
	pending := q.pending
	q.pending = make(map[*offer]struct{})
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
	for o := range pending {
		o.refuse(cause)
	}
}
