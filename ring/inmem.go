package ring

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// inmemDepth is how many frames a link holds in flight: the in-memory
// stand-in for TCP and HTTP/2 flow-control windows.
const inmemDepth = 4

// ErrKilled is the cause of the links of a member that InmemNetwork.Kill
// made vanish.
var ErrKilled = errors.New("member killed")

// InmemNetwork connects InmemTransports by address within one process, as
// hashicorp/raft's InmemTransport does, so that whole rings run in a test
// without sockets. Frames are copied, checked and timed out as on the wire.
type InmemNetwork struct {
	mu    sync.Mutex
	nodes map[string]*InmemTransport
}

// NewInmemNetwork returns an empty network.
func NewInmemNetwork() *InmemNetwork {
	return &InmemNetwork{nodes: make(map[string]*InmemTransport)}
}

// Transport returns the transport listening at addr, creating it.
func (n *InmemNetwork) Transport(addr string) *InmemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.nodes[addr]; ok {
		return t
	}
	t := &InmemTransport{net: n, addr: addr, queue: newAcceptQueue(), pipes: make(map[*inmemPipe]struct{})}
	n.nodes[addr] = t
	return t
}

// Kill makes the member at addr vanish as if its process died: every link
// it has breaks at once, and it refuses new ones.
func (n *InmemNetwork) Kill(addr string) {
	n.mu.Lock()
	t := n.nodes[addr]
	n.mu.Unlock()
	if t != nil {
		t.shutdown(ErrKilled)
	}
}

func (n *InmemNetwork) lookup(addr string) *InmemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes[addr]
}

// InmemTransport is a RingTransport inside an InmemNetwork.
type InmemTransport struct {
	net  *InmemNetwork
	addr string

	queue *acceptQueue

	mu    sync.Mutex
	down  error                   // set by Kill or Close
	pipes map[*inmemPipe]struct{} // every open link with an end here
}

// Addr is the address peers dial to reach this transport.
func (t *InmemTransport) Addr() string { return t.addr }

// Close breaks every link and refuses new ones.
func (t *InmemTransport) Close() error {
	t.shutdown(ErrClosed)
	return nil
}

func (t *InmemTransport) shutdown(cause error) {
	t.mu.Lock()
	if t.down == nil {
		t.down = cause
	}
	pipes := make([]*inmemPipe, 0, len(t.pipes))
	for p := range t.pipes {
		pipes = append(pipes, p)
	}
	t.mu.Unlock()
	err := fmt.Errorf("member at %s: %w", t.addr, cause)
	t.queue.shutdown(err)
	for _, p := range pipes {
		p.close(err)
	}
}

func (t *InmemTransport) forget(p *inmemPipe) {
	t.mu.Lock()
	delete(t.pipes, p)
	t.mu.Unlock()
}

// Dial implements RingTransport.
func (t *InmemTransport) Dial(ctx context.Context, id StreamID) (SendLink, error) {
	dst := t.net.lookup(id.To.Addr)
	if dst == nil {
		return nil, fmt.Errorf("dialing %s: no member listens there", id.To)
	}
	p := newInmemPipe(id, t, dst)
	if err := t.attach(p); err != nil {
		return nil, fmt.Errorf("dialing %s: %w", id.To, err)
	}
	if err := dst.offer(p); err != nil {
		p.close(err)
		return nil, fmt.Errorf("dialing %s: refused: %w", id.To, err)
	}
	select {
	case <-p.accepted:
		return &inmemSender{p: p, timer: stoppedTimer()}, nil
	case <-p.closed:
		return nil, fmt.Errorf("dialing %s: refused: %w", id.To, p.cause)
	case <-ctx.Done():
		p.close(context.Cause(ctx))
		return nil, fmt.Errorf("dialing %s: %w", id.To, context.Cause(ctx))
	}
}

func (t *InmemTransport) attach(p *inmemPipe) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down != nil {
		return t.down
	}
	t.pipes[p] = struct{}{}
	return nil
}

// offer announces an incoming stream, as the arrival of a gRPC call does.
func (t *InmemTransport) offer(p *inmemPipe) error {
	if err := t.attach(p); err != nil {
		return err
	}
	return t.queue.offer(&offer{id: p.id, refuse: p.close, link: p})
}

// Accept implements RingTransport.
func (t *InmemTransport) Accept(ctx context.Context, id StreamID) (RecvLink, error) {
	o, err := t.queue.accept(ctx, id)
	if err != nil {
		return nil, err
	}
	p := o.link.(*inmemPipe)
	close(p.accepted)
	return &inmemReceiver{p: p, timer: stoppedTimer()}, nil
}

// inmemPipe is one stream: a bounded queue of frames and a pool of their
// buffers, so a warm link allocates nothing.
type inmemPipe struct {
	id       StreamID
	ends     [2]*InmemTransport
	frames   chan *inmemFrame
	free     chan *inmemFrame
	made     int // frames allocated, at most inmemDepth (sender only)
	acked    atomic.Uint64
	ackSig   chan struct{}
	accepted chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	cause     error
}

type inmemFrame struct {
	h    FrameHeader
	data []float32
}

func newInmemPipe(id StreamID, from, to *InmemTransport) *inmemPipe {
	return &inmemPipe{
		id: id, ends: [2]*InmemTransport{from, to},
		frames:   make(chan *inmemFrame, inmemDepth),
		free:     make(chan *inmemFrame, inmemDepth),
		ackSig:   make(chan struct{}, 1),
		accepted: make(chan struct{}),
		closed:   make(chan struct{}),
	}
}

func (p *inmemPipe) close(cause error) {
	p.closeOnce.Do(func() {
		p.cause = cause
		close(p.closed)
		for _, t := range p.ends {
			t.forget(p)
		}
	})
}

func (p *inmemPipe) closedErr() error {
	return fmt.Errorf("%w: %w", ErrPeerClosed, p.cause)
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func timeoutErr(what string, d time.Duration) error {
	return fmt.Errorf("%w: %s took longer than %v", ErrTimeout, what, d.Round(time.Millisecond))
}

type inmemSender struct {
	p     *inmemPipe
	timer *time.Timer // reused for every wait
}

func (s *inmemSender) Send(h *FrameHeader, data []float32, deadline time.Time) error {
	p := s.p
	var f *inmemFrame
	select {
	case f = <-p.free:
	case <-p.closed:
		return p.closedErr()
	default:
		if p.made < inmemDepth {
			p.made++
			f = &inmemFrame{}
		} else {
			d := time.Until(deadline)
			s.timer.Reset(d)
			select {
			case f = <-p.free:
				s.timer.Stop()
			case <-p.closed:
				s.timer.Stop()
				return p.closedErr()
			case <-s.timer.C:
				return timeoutErr("sending a frame", d)
			}
		}
	}
	f.h = *h
	f.data = append(f.data[:0], data...)
	select {
	case p.frames <- f: // never blocks: at most inmemDepth frames exist
		return nil
	case <-p.closed:
		return p.closedErr()
	}
}

func (s *inmemSender) WaitAck(seq uint64, deadline time.Time) error {
	p := s.p
	d := time.Until(deadline)
	s.timer.Reset(d)
	defer s.timer.Stop()
	for p.acked.Load() < seq {
		select {
		case <-p.ackSig:
		case <-p.closed:
			return p.closedErr()
		case <-s.timer.C:
			return timeoutErr(fmt.Sprintf("acknowledging collective %d", seq), d)
		}
	}
	return nil
}

// Release implements SendLink: Send copies, so nothing is ever held.
func (s *inmemSender) Release(time.Time) bool { return true }

func (s *inmemSender) Done() <-chan struct{} { return s.p.closed }

func (s *inmemSender) Err() error {
	select {
	case <-s.p.closed:
		return s.p.closedErr()
	default:
		return nil
	}
}

func (s *inmemSender) Close(cause error) { s.p.close(cause) }

type inmemReceiver struct {
	p     *inmemPipe
	timer *time.Timer
}

func (r *inmemReceiver) Recv(want *FrameHeader, dst []float32, op Apply, deadline time.Time) error {
	p := r.p
	var f *inmemFrame
	select {
	case f = <-p.frames:
	case <-p.closed:
		return p.closedErr()
	default:
		d := time.Until(deadline)
		r.timer.Reset(d)
		select {
		case f = <-p.frames:
			r.timer.Stop()
		case <-p.closed:
			r.timer.Stop()
			return p.closedErr()
		case <-r.timer.C:
			return timeoutErr("receiving a frame", d)
		}
	}
	defer func() { p.free <- f }()
	if err := CheckFrame(&f.h, len(f.data), want, len(dst)); err != nil {
		return err
	}
	if op == ApplyAdd {
		addFloats(dst, f.data)
	} else {
		copy(dst, f.data)
	}
	return nil
}

func (r *inmemReceiver) Ack(seq uint64) error {
	select {
	case <-r.p.closed:
		return r.p.closedErr()
	default:
	}
	r.p.acked.Store(seq)
	select {
	case r.p.ackSig <- struct{}{}:
	default:
	}
	return nil
}

func (r *inmemReceiver) Close(cause error) { r.p.close(cause) }
