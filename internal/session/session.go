// Package session puts the worker–coordinator Session stream behind a small
// interface, as hashicorp/raft puts its network behind Transport: a worker
// opens sessions through a Dialer, which is gRPC in production (GRPC) and a
// pair of channels in tests (Inmem), so that a coordinator and its workers
// can run in one process without sockets. Messages crossing an in-memory
// session are cloned, as serialization would copy them.
package session

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	nicepb "github.com/nice-flow/nice/proto"
)

// Stream is the worker's end of one open session.
type Stream interface {
	Send(*nicepb.WorkerMessage) error
	Recv() (*nicepb.CoordinatorMessage, error)
}

// Dialer opens sessions with the coordinator. A session lasts until its
// context ends or either end fails.
type Dialer interface {
	Dial(ctx context.Context) (Stream, error)
}

// GRPC returns a Dialer that opens Coordinator.Session streams over conn.
func GRPC(conn grpc.ClientConnInterface) Dialer { return grpcDialer{nicepb.NewCoordinatorClient(conn)} }

type grpcDialer struct{ c nicepb.CoordinatorClient }

func (d grpcDialer) Dial(ctx context.Context) (Stream, error) { return d.c.Session(ctx) }

// Handler is the coordinator's side of a session (its Session method).
type Handler func(nicepb.Coordinator_SessionServer) error

// Inmem returns a Dialer whose sessions run h in this process, connected
// by channels.
func Inmem(h Handler) Dialer { return inmemDialer{h} }

type inmemDialer struct{ h Handler }

// ErrEnded is what an in-memory session's reads and writes return once
// the coordinator's handler returned without an error.
var ErrEnded = errors.New("session ended by the coordinator")

func (d inmemDialer) Dial(ctx context.Context) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	p := &pipe{ctx: sctx, toServer: make(chan *nicepb.WorkerMessage, 64),
		toClient: make(chan *nicepb.CoordinatorMessage, 64), done: make(chan struct{})}
	go func() {
		err := d.h(&serverEnd{p})
		if err == nil {
			err = ErrEnded
		}
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
		cancel()
	}()
	return &clientEnd{p}, nil
}

type pipe struct {
	ctx      context.Context
	toServer chan *nicepb.WorkerMessage
	toClient chan *nicepb.CoordinatorMessage
	done     chan struct{} // closed when the handler returned
	mu       sync.Mutex
	err      error
}

func (p *pipe) ended() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	return io.EOF
}

type clientEnd struct{ p *pipe }

func (c *clientEnd) Send(m *nicepb.WorkerMessage) error {
	m = proto.Clone(m).(*nicepb.WorkerMessage)
	select {
	case c.p.toServer <- m:
		return nil
	case <-c.p.done:
		return c.p.ended()
	case <-c.p.ctx.Done():
		return c.p.ctx.Err()
	}
}

func (c *clientEnd) Recv() (*nicepb.CoordinatorMessage, error) {
	select {
	case m := <-c.p.toClient:
		return m, nil
	case <-c.p.done:
		select {
		case m := <-c.p.toClient: // sent before the handler returned
			return m, nil
		default:
			return nil, c.p.ended()
		}
	case <-c.p.ctx.Done():
		return nil, c.p.ctx.Err()
	}
}

// serverEnd is the coordinator's end: a nicepb.Coordinator_SessionServer.
type serverEnd struct{ p *pipe }

var _ nicepb.Coordinator_SessionServer = (*serverEnd)(nil)

func (s *serverEnd) Send(m *nicepb.CoordinatorMessage) error {
	m = proto.Clone(m).(*nicepb.CoordinatorMessage)
	select {
	case s.p.toClient <- m:
		return nil
	case <-s.p.ctx.Done():
		return s.p.ctx.Err()
	}
}

func (s *serverEnd) Recv() (*nicepb.WorkerMessage, error) {
	select {
	case m := <-s.p.toServer:
		return m, nil
	case <-s.p.ctx.Done():
		return nil, s.p.ctx.Err()
	}
}

func (s *serverEnd) Context() context.Context     { return s.p.ctx }
func (s *serverEnd) SetHeader(metadata.MD) error  { return nil }
func (s *serverEnd) SendHeader(metadata.MD) error { return nil }
func (s *serverEnd) SetTrailer(metadata.MD)       {}
func (s *serverEnd) SendMsg(m any) error {
	cm, ok := m.(*nicepb.CoordinatorMessage)
	if !ok {
		return errors.New("in-memory session: SendMsg of a non-CoordinatorMessage")
	}
	return s.Send(cm)
}
func (s *serverEnd) RecvMsg(m any) error {
	wm, ok := m.(*nicepb.WorkerMessage)
	if !ok {
		return errors.New("in-memory session: RecvMsg into a non-WorkerMessage")
	}
	got, err := s.Recv()
	if err != nil {
		return err
	}
	proto.Merge(wm, got)
	return nil
}
