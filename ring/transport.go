package ring

import (
	"context"
	"fmt"
	"time"
)

// Peer is a member of a ring as the coordinator names it.
type Peer struct {
	ID   string // stable worker id, checked at both ends of a stream
	Addr string // where its transport listens (host:port for gRPC)
}

func (p Peer) String() string { return p.ID + "@" + p.Addr }

// StreamID names one stream of a ring: the generation, its two ends and the
// ring's size. Both ends compute it from the plan and must agree.
type StreamID struct {
	Generation uint64
	From       Peer
	FromRank   int
	To         Peer
	RingSize   int
}

// match says why an announced stream is not the one expected, or nil.
func (want StreamID) match(got StreamID) error {
	switch {
	case got.Generation < want.Generation:
		return &FrameError{Field: "generation", Got: got.Generation, Want: want.Generation, Kind: ErrStaleGeneration}
	case got.Generation != want.Generation:
		return &FrameError{Field: "generation", Got: got.Generation, Want: want.Generation, Kind: ErrBadFrame}
	case got.RingSize != want.RingSize:
		return &FrameError{Field: "ring size", Got: uint64(got.RingSize), Want: uint64(want.RingSize), Kind: ErrBadFrame}
	case got.FromRank != want.FromRank:
		return &FrameError{Field: "sender rank", Got: uint64(got.FromRank), Want: uint64(want.FromRank), Kind: ErrBadFrame}
	case got.From.ID != want.From.ID || got.To.ID != want.To.ID:
		return fmt.Errorf("%w: stream from %q to %q, want from %q to %q", ErrBadFrame, got.From.ID, got.To.ID, want.From.ID, want.To.ID)
	}
	return nil
}

// RingTransport connects a member to its two neighbours: one stream per
// neighbour per generation, data flowing from left to right. The gRPC
// implementation is GRPCTransport, the in-memory one InmemTransport.
type RingTransport interface {
	// Dial opens stream id from id.From (this member) to its right-hand
	// neighbour id.To, and returns once id.To accepted it (or refused it,
	// with an error wrapping ErrStaleGeneration or ErrBadFrame).
	Dial(ctx context.Context, id StreamID) (SendLink, error)
	// Accept waits for stream id from the left-hand neighbour id.From to
	// id.To (this member). From this call on, streams of older generations
	// are refused with ErrStaleGeneration.
	Accept(ctx context.Context, id StreamID) (RecvLink, error)
	// Close breaks every link and refuses new ones.
	Close() error
}

// SendLink is the outgoing stream of one generation.
type SendLink interface {
	// Send transmits one frame of len(data) floats. The transport may read
	// data after Send returns: the caller does not modify it until WaitAck of
	// the frame's collective returned. Send fails with ErrTimeout if it is
	// blocked (by flow control) past the deadline.
	Send(h *FrameHeader, data []float32, deadline time.Time) error
	// WaitAck waits until the neighbour acknowledged collective seq.
	WaitAck(seq uint64, deadline time.Time) error
	// Release waits until the transport holds no reference to any data
	// passed to Send, or until the deadline; it reports whether it does
	// not. The member calls it before AllReduce returns, also after a
	// failure, so that the caller may write to its buffer again.
	Release(deadline time.Time) bool
	// Done is closed once the link is broken; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Close breaks the link (idempotent); the neighbour notices at once.
	Close(cause error)
}

// RecvLink is the incoming stream of one generation.
type RecvLink interface {
	// Recv receives the next frame, refuses it (with a FrameError) unless
	// CheckFrame accepts it against want and len(dst), and then adds it to or
	// copies it into dst. It fails with ErrTimeout after the deadline.
	Recv(want *FrameHeader, dst []float32, op Apply, deadline time.Time) error
	// Ack tells the sender that every frame of collective seq arrived.
	Ack(seq uint64) error
	// Close breaks the link (idempotent); the neighbour notices at once.
	Close(cause error)
}
