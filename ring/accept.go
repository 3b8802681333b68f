package ring

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// StreamLimits bound what announced streams can make a transport hold
// before its member accepts them. A stream waits in a queue until the
// first all-reduce of its generation, and anyone who reaches the port can
// announce streams of generations to come, so both their number and their
// wait are bounded.
type StreamLimits struct {
	// MaxPending is how many announced streams may wait at once; more are
	// refused with ErrTooManyStreams (ResourceExhausted on the wire). A
	// member needs one per generation it has not reached yet: a few.
	MaxPending int
	// PendingTimeout is how long an announced stream waits to be accepted
	// before it is refused. A neighbour's dial gives up after its
	// Config.StartTimeout (30 s) anyway.
	PendingTimeout time.Duration
}

// DefaultStreamLimits returns the limits both transports start with.
func DefaultStreamLimits() StreamLimits {
	return StreamLimits{MaxPending: 64, PendingTimeout: time.Minute}
}

// offer is an incoming stream announced to a transport and waiting for the
// member's Accept.
type offer struct {
	id     StreamID
	refuse func(error) // ends the stream, telling the dialer why
	link   any         // the transport's end of the stream
	expiry *time.Timer // refuses it once it waited PendingTimeout
}

// acceptQueue pairs announced streams with Accept calls, for both
// transports: it refuses streams of generations older than the newest one
// accepted, streams of that generation from the wrong peer, streams beyond
// its limits, and streams that waited too long.
type acceptQueue struct {
	mu      sync.Mutex
	limits  StreamLimits
	down    error
	newest  uint64
	pending map[*offer]struct{}
	changed chan struct{} // closed and replaced when pending grows
}

func newAcceptQueue() *acceptQueue {
	return &acceptQueue{limits: DefaultStreamLimits(), pending: make(map[*offer]struct{}), changed: make(chan struct{})}
}

// setLimits applies to the streams announced from now on.
func (q *acceptQueue) setLimits(l StreamLimits) {
	q.mu.Lock()
	q.limits = l
	q.mu.Unlock()
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
	if len(q.pending) >= q.limits.MaxPending {
		return fmt.Errorf("%w: %d streams already wait to be accepted, the limit (stream of generation %d from %q)",
			ErrTooManyStreams, len(q.pending), o.id.Generation, o.id.From.ID)
	}
	q.pending[o] = struct{}{}
	wait := q.limits.PendingTimeout
	o.expiry = time.AfterFunc(wait, func() {
		if q.take(o) {
			o.refuse(fmt.Errorf("%w: the stream of generation %d was not accepted within %v", ErrTimeout, o.id.Generation, wait))
		}
	})
	close(q.changed)
	q.changed = make(chan struct{})
	return nil
}

// take removes o if it still waits, and reports whether it did.
func (q *acceptQueue) take(o *offer) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.remove(o)
}

// remove is take with q.mu held.
func (q *acceptQueue) remove(o *offer) bool {
	if _, ok := q.pending[o]; !ok {
		return false
	}
	delete(q.pending, o)
	o.expiry.Stop()
	return true
}

// withdraw forgets an offer whose dialer went away.
func (q *acceptQueue) withdraw(o *offer) { q.take(o) }

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
				q.remove(o)
			case o.id.Generation < q.newest || (err != nil && o.id.Generation == id.Generation):
				refused = append(refused, o)
				q.remove(o)
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
	var pending []*offer
	for o := range q.pending {
		pending = append(pending, o)
		q.remove(o)
	}
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
	for _, o := range pending {
		o.refuse(cause)
	}
}
