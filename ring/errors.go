package ring

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is.
var (
	// ErrRingBroken is wrapped by every error that ends a collective early:
	// the ring of this generation is unusable and the coordinator must plan a
	// new one. The error also names the neighbour involved (see BrokenError).
	ErrRingBroken = errors.New("ring broken")
	// ErrStaleGeneration marks a stream, frame or configuration whose
	// generation is older than the member's current one.
	ErrStaleGeneration = errors.New("stale generation")
	// ErrBadFrame marks a frame that does not fit where it arrived: wrong
	// collective, step, chunk index, offset or length, or a stream from an
	// unexpected peer.
	ErrBadFrame = errors.New("bad frame")
	// ErrTimeout marks a receive or send that missed its deadline.
	ErrTimeout = errors.New("deadline exceeded")
	// ErrNotConfigured is returned by AllReduce before the first Configure.
	ErrNotConfigured = errors.New("ring member not configured")
	// ErrClosed is returned once a member or transport has been closed.
	ErrClosed = errors.New("ring closed")
	// ErrSuperseded is the cause given to links of a generation that a newer
	// Configure replaced.
	ErrSuperseded = errors.New("superseded by a newer generation")
	// ErrPeerClosed is the cause when a neighbour ended the stream.
	ErrPeerClosed = errors.New("peer closed the stream")
	// ErrTooManyStreams marks a stream refused because as many as
	// StreamLimits.MaxPending already wait to be accepted.
	ErrTooManyStreams = errors.New("too many streams waiting")
)

// Direction says which of a member's two links failed.
type Direction string

const (
	// FromLeft is the incoming stream, from the left-hand neighbour.
	FromLeft Direction = "receiving from"
	// ToRight is the outgoing stream, to the right-hand neighbour.
	ToRight Direction = "sending to"
	// Local is a failure of the member itself (its context, its Configure).
	Local Direction = "local"
)

// BrokenError is what AllReduce returns when a collective fails. It wraps
// ErrRingBroken and the cause.
type BrokenError struct {
	Generation uint64
	Rank       int // this member's rank
	Dir        Direction
	PeerRank   int  // rank of the neighbour on the failed link (-1 for Local)
	Peer       Peer // the neighbour on the failed link
	Err        error
}

func (e *BrokenError) Error() string {
	if e.Dir == Local {
		return fmt.Sprintf("ring broken in generation %d at rank %d: %v", e.Generation, e.Rank, e.Err)
	}
	return fmt.Sprintf("ring broken in generation %d at rank %d: %s rank %d (%s): %v",
		e.Generation, e.Rank, e.Dir, e.PeerRank, e.Peer, e.Err)
}

// Unwrap lets errors.Is find both ErrRingBroken and the cause.
func (e *BrokenError) Unwrap() []error { return []error{ErrRingBroken, e.Err} }

// FrameError says which field of a received frame was refused.
type FrameError struct {
	Field     string // "generation", "collective", "step", "chunk", "offset", "total length", "length"
	Got, Want uint64
	Kind      error // ErrStaleGeneration or ErrBadFrame
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("%v: wrong %s: got %d, want %d", e.Kind, e.Field, e.Got, e.Want)
}

func (e *FrameError) Unwrap() error { return e.Kind }
