package ring

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrInjected is the cause of failures made by a FrameFault.
var ErrInjected = errors.New("injected fault")

// FaultAction is what a FrameFault does with a frame.
type FaultAction int

const (
	// Deliver sends the frame (possibly rewritten by the fault).
	Deliver FaultAction = iota
	// Drop discards the frame silently: the sender looks alive but stalled.
	Drop
	// Break fails the send with ErrInjected, which breaks the link as a
	// crashing sender would.
	Break
)

// FrameFault sees every frame a member sends, before the transport does. It
// may rewrite the header in place or return another payload (say, one float
// short), in the spirit of pebble's errorfs. It runs on the sender's
// goroutine and must not block.
type FrameFault func(id StreamID, h *FrameHeader, data []float32) (FaultAction, []float32)

// WithFaults wraps a transport so that fault decides the fate of every
// frame sent through it. Tests use it on both transports to inject stale,
// malformed and lost frames.
func WithFaults(t RingTransport, fault FrameFault) RingTransport {
	return &faultTransport{RingTransport: t, fault: fault}
}

type faultTransport struct {
	RingTransport
	fault FrameFault
}

func (t *faultTransport) Dial(ctx context.Context, id StreamID) (SendLink, error) {
	l, err := t.RingTransport.Dial(ctx, id)
	if err != nil {
		return nil, err
	}
	return &faultSender{SendLink: l, id: id, fault: t.fault}, nil
}

type faultSender struct {
	SendLink
	id    StreamID
	fault FrameFault
}

func (s *faultSender) Send(h *FrameHeader, data []float32, deadline time.Time) error {
	hh := *h
	switch act, d := s.fault(s.id, &hh, data); act {
	case Drop:
		return nil
	case Break:
		err := fmt.Errorf("sending frame of step %d chunk %d: %w", h.Step, h.Chunk, ErrInjected)
		s.SendLink.Close(err)
		return err
	default:
		return s.SendLink.Send(&hh, d, deadline)
	}
}
