package ring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/nice-flow/nice/internal/f32"
	nicepb "github.com/nice-flow/nice/proto"
)

// helloKey is the metadata key announcing a stream (a binary RingHello).
const helloKey = "nice-ring-hello-bin"

// GRPCTuning sizes gRPC for a few large messages on few streams. The
// defaults were chosen with `nice-coord bench allreduce`.
type GRPCTuning struct {
	// WindowBytes is the HTTP/2 flow-control window of a stream and of a
	// connection. Far above the data a ring has in flight (a few frames), so
	// flow control never stalls the pipeline; setting it also turns off
	// gRPC's window probing.
	WindowBytes int32
	// WriteBufferBytes and ReadBufferBytes are the socket buffers of gRPC:
	// larger ones mean fewer system calls per byte. Every byte is copied
	// once through each. Zero turns a buffer off, which costs more than the
	// copy: gRPC then writes each 16 KiB HTTP/2 frame with two system calls
	// (its 9-byte header, then its payload); busbw at 2 members fell from
	// 0.88 to 0.62 GB/s.
	WriteBufferBytes int
	ReadBufferBytes  int
	// RecycleBuffers gives gRPC a pool that reuses receive buffers without
	// zeroing them first (gRPC's own pool clears every buffer it hands out,
	// which costs a pass over every received byte). gRPC overwrites a
	// buffer before it reads it, so this only saves work.
	RecycleBuffers bool
}

// DefaultGRPCTuning returns the tuning ServerOptions and NewGRPCTransport
// use.
func DefaultGRPCTuning() GRPCTuning {
	return GRPCTuning{WindowBytes: 32 << 20, WriteBufferBytes: 1 << 20, ReadBufferBytes: 1 << 20, RecycleBuffers: true}
}

// MaxMessageBytes is above the largest frame plus its header: the receive
// limit of a server that serves ring streams.
const MaxMessageBytes = MaxFrameBytes + 64<<10

// maxAckBytes is above the largest RingAck (two varints).
const maxAckBytes = 1 << 10

// ServerOptions returns the options the worker's grpc.Server needs for
// ring streams: a message limit above the largest frame, and windows and
// buffers sized for them (DefaultGRPCTuning). Other services on the same
// server get the same limits and buffers.
func ServerOptions() []grpc.ServerOption { return DefaultGRPCTuning().ServerOptions() }

// ServerOptions returns the server options of this tuning.
func (t GRPCTuning) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.InitialWindowSize(t.WindowBytes),
		grpc.InitialConnWindowSize(t.WindowBytes),
		grpc.WriteBufferSize(t.WriteBufferBytes),
		grpc.ReadBufferSize(t.ReadBufferBytes),
	}
	if t.RecycleBuffers {
		opts = append(opts, experimental.BufferPool(recyclingPool))
	}
	return opts
}

// DialOptions returns the dial options of this tuning; pass them to
// NewGRPCTransport to override the defaults.
func (t GRPCTuning) DialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithInitialWindowSize(t.WindowBytes),
		grpc.WithInitialConnWindowSize(t.WindowBytes),
		grpc.WithWriteBufferSize(t.WriteBufferBytes),
		grpc.WithReadBufferSize(t.ReadBufferBytes),
	}
	if t.RecycleBuffers {
		opts = append(opts, experimental.WithBufferPool(recyclingPool))
	}
	return opts
}

// GRPCTransport is the RingTransport of the workers: it dials neighbours
// with its own client connections and serves the streams of its left-hand
// neighbours through RegisterServer on the worker's grpc.Server.
type GRPCTransport struct {
	nicepb.UnimplementedRingServiceServer
	dialOpts []grpc.DialOption
	queue    *acceptQueue
	routes   routeCounts

	localDir string       // set before the first dial; see SetLocalDir
	localLog *slog.Logger // where the routes of new connections are logged

	mu     sync.Mutex
	closed bool
	conns  map[string]*grpc.ClientConn
	links  map[linkCloser]struct{}
	wg     sync.WaitGroup // watchers of outgoing streams
}

type linkCloser interface{ Close(error) }

// NewGRPCTransport returns a transport tuned by DefaultGRPCTuning that
// dials peers in plaintext unless extra carries transport credentials (the
// worker passes the cluster's, creds.Bundle.DialOption); extra options
// (credentials, another tuning's DialOptions) are applied after the
// defaults, so they win.
func NewGRPCTransport(extra ...grpc.DialOption) *GRPCTransport {
	opts := append(DefaultGRPCTuning().DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxAckBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
		// A restarted neighbour is found again quickly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	return &GRPCTransport{
		dialOpts: append(opts, extra...),
		queue:    newAcceptQueue(),
		conns:    make(map[string]*grpc.ClientConn),
		links:    make(map[linkCloser]struct{}),
	}
}

// SetStreamLimits bounds the streams announced from now on that wait to be
// accepted (DefaultStreamLimits until called).
func (t *GRPCTransport) SetStreamLimits(l StreamLimits) { t.queue.setLimits(l) }

// SetLocalDir makes the transport reach each peer through its socket in dir
// (LocalSocketPath of the peer's address) when one answers there, and over
// TCP otherwise; the peer serves it with ListenLocal. Call it before the
// first Dial. Each new connection's route is logged on log at Info (nil:
// not logged).
func (t *GRPCTransport) SetLocalDir(dir string, log *slog.Logger) {
	t.mu.Lock()
	t.localDir, t.localLog = dir, log
	t.mu.Unlock()
}

// routeCounts counts the connections a transport with a local folder made,
// by route.
type routeCounts struct{ local, tcp atomic.Int64 }

// Routes returns how many connections to peers went through their local
// sockets and how many over TCP, since the transport was created (both zero
// without a local folder: gRPC's own dialer is used then).
func (t *GRPCTransport) Routes() (local, tcp int64) {
	return t.routes.local.Load(), t.routes.tcp.Load()
}

// RegisterServer registers the ring service on s (a worker's server,
// created with ServerOptions).
func (t *GRPCTransport) RegisterServer(s grpc.ServiceRegistrar) {
	nicepb.RegisterRingServiceServer(s, t)
}

// Close breaks every link, refuses new streams, closes the client
// connections and waits for the transport's goroutines.
func (t *GRPCTransport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	links := t.links
	t.links = make(map[linkCloser]struct{})
	conns := t.conns
	t.mu.Unlock()
	t.queue.shutdown(ErrClosed)
	for l := range links {
		l.Close(ErrClosed)
	}
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing connection to %s: %w", addr, err))
		}
	}
	t.wg.Wait()
	return errors.Join(errs...)
}

func (t *GRPCTransport) track(l linkCloser) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	t.links[l] = struct{}{}
	return nil
}

func (t *GRPCTransport) untrack(l linkCloser) {
	t.mu.Lock()
	delete(t.links, l)
	t.mu.Unlock()
}

func (t *GRPCTransport) conn(addr string) (*grpc.ClientConn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if cc, ok := t.conns[addr]; ok {
		return cc, nil
	}
	opts := t.dialOpts
	if t.localDir != "" {
		opts = append(opts[:len(opts):len(opts)], grpc.WithContextDialer(localFirst(addr, LocalSocketPath(t.localDir, addr), &t.routes, t.localLog)))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating client for %s: %w", addr, err)
	}
	t.conns[addr] = cc
	return cc, nil
}

// refusal turns a cause into the status the dialer will see; fromStatus
// turns it back into an error that wraps the same sentinel.
func refusal(cause error) error {
	code := codes.Aborted
	switch {
	case errors.Is(cause, ErrStaleGeneration):
		code = codes.FailedPrecondition
	case errors.Is(cause, ErrBadFrame):
		code = codes.InvalidArgument
	case errors.Is(cause, ErrTooManyStreams):
		code = codes.ResourceExhausted
	}
	return status.Error(code, cause.Error())
}

func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: refused: %s", ErrStaleGeneration, st.Message())
	case codes.InvalidArgument:
		return fmt.Errorf("%w: refused: %s", ErrBadFrame, st.Message())
	case codes.ResourceExhausted:
		return fmt.Errorf("%w: refused: %s", ErrTooManyStreams, st.Message())
	}
	return fmt.Errorf("%w: %s: %s", ErrPeerClosed, st.Code(), st.Message())
}

// Dial implements RingTransport.
func (t *GRPCTransport) Dial(ctx context.Context, id StreamID) (SendLink, error) {
	cc, err := t.conn(id.To.Addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", id.To, err)
	}
	hello, err := proto.Marshal(&nicepb.RingHello{
		Generation: id.Generation, SenderRank: uint32(id.FromRank), SenderId: id.From.ID,
		ReceiverId: id.To.ID, RingSize: uint32(id.RingSize),
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", id.To, err)
	}
	sctx, cancel := context.WithCancelCause(context.Background())
	sctx = metadata.AppendToOutgoingContext(sctx, helloKey, string(hello))
	// Until the stream is accepted, the caller's ctx bounds the wait.
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	cs, err := nicepb.NewRingServiceClient(cc).Exchange(sctx, grpc.WaitForReady(true), grpc.CallContentSubtype(codecName))
	if err == nil {
		var ack nicepb.RingAck
		if err = cs.RecvMsg(&ack); err == nil && (ack.Seq != 0 || ack.Generation != id.Generation) {
			err = fmt.Errorf("%w: stream answered with ack %d of generation %d", ErrBadFrame, ack.Seq, ack.Generation)
		}
	}
	if !stop() || err != nil {
		cancel(err)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dialing %s: %w", id.To, context.Cause(ctx))
		}
		return nil, fmt.Errorf("dialing %s: %w", id.To, fromStatus(err))
	}
	o := &grpcOutgoing{t: t, id: id, stream: cs, cancel: cancel, closed: make(chan struct{}), ackSig: make(chan struct{}, 1)}
	o.frame.release = newReleaseTracker()
	o.timer = time.AfterFunc(time.Hour, func() {
		what := "a send or acknowledgement took too long"
		if w := o.waitingFor.Load(); w != nil {
			what = *w
		}
		o.Close(fmt.Errorf("%w: %s", ErrTimeout, what))
	})
	o.timer.Stop()
	if err := t.track(o); err != nil {
		cancel(err)
		return nil, fmt.Errorf("dialing %s: %w", id.To, err)
	}
	t.wg.Add(1)
	go o.watch()
	return o, nil
}

// grpcOutgoing is the client end of a stream: it sends frames and reads
// acks.
type grpcOutgoing struct {
	t      *GRPCTransport
	id     StreamID
	stream grpc.ClientStream
	cancel context.CancelCauseFunc
	frame  outFrame

	timer      *time.Timer // breaks the link when a send or ack wait overruns
	waitingFor atomic.Pointer[string]

	acked  atomic.Uint64
	ackSig chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	cause     error
}

var (
	whatSend = "sending a frame took too long"
	whatAck  = "waiting for an acknowledgement took too long"
)

func (o *grpcOutgoing) Close(cause error) {
	o.closeOnce.Do(func() {
		o.cause = cause
		close(o.closed)
		o.cancel(cause)
		o.timer.Stop()
		o.t.untrack(o)
	})
}

// watch reads acks until the stream ends; an end is a broken link.
func (o *grpcOutgoing) watch() {
	defer o.t.wg.Done()
	var ack nicepb.RingAck
	for {
		if err := o.stream.RecvMsg(&ack); err != nil {
			if err == io.EOF {
				err = errors.New("stream ended by the receiver")
			}
			o.Close(fromStatus(err))
			return
		}
		if ack.Generation != o.id.Generation || ack.Seq <= o.acked.Load() {
			o.Close(fmt.Errorf("%w: ack %d of generation %d after %d", ErrBadFrame, ack.Seq, ack.Generation, o.acked.Load()))
			return
		}
		o.acked.Store(ack.Seq)
		select {
		case o.ackSig <- struct{}{}:
		default:
		}
	}
}

func (o *grpcOutgoing) Send(h *FrameHeader, data []float32, deadline time.Time) error {
	o.frame.h = *h
	o.frame.data = f32.Bytes(data)
	o.waitingFor.Store(&whatSend)
	o.timer.Reset(time.Until(deadline))
	err := o.stream.SendMsg(&o.frame)
	o.timer.Stop()
	o.frame.data = nil
	if err != nil {
		// SendMsg reports io.EOF when the receiver ended the stream; the
		// reason arrives through watch.
		select {
		case <-o.closed:
		case <-time.After(100 * time.Millisecond):
			o.Close(fromStatus(err))
		}
		return o.Err()
	}
	return nil
}

func (o *grpcOutgoing) WaitAck(seq uint64, deadline time.Time) error {
	o.waitingFor.Store(&whatAck)
	o.timer.Reset(time.Until(deadline))
	defer o.timer.Stop()
	for o.acked.Load() < seq {
		select {
		case <-o.ackSig:
		case <-o.closed:
			return o.Err()
		}
	}
	return nil
}

// Release implements SendLink: gRPC's writer may still read a payload after
// SendMsg returned, until it wrote it or, once the stream is cancelled,
// dropped it.
func (o *grpcOutgoing) Release(deadline time.Time) bool {
	return o.frame.release.wait(deadline)
}

func (o *grpcOutgoing) Done() <-chan struct{} { return o.closed }

func (o *grpcOutgoing) Err() error {
	select {
	case <-o.closed:
		if errors.Is(o.cause, ErrTimeout) || errors.Is(o.cause, ErrPeerClosed) {
			return o.cause
		}
		return fmt.Errorf("%w: %w", ErrPeerClosed, o.cause)
	default:
		return nil
	}
}

// Exchange serves the stream of a left-hand neighbour: it announces the
// stream to the queue, and once Accept took it, lives until the link
// breaks. Frames are read by the member's goroutine, not this one.
func (t *GRPCTransport) Exchange(stream nicepb.RingService_ExchangeServer) error {
	id, err := helloOf(stream.Context())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	in := &grpcIncoming{t: t, id: id, stream: stream, accepted: make(chan struct{}), closed: make(chan struct{})}
	in.timer = time.AfterFunc(time.Hour, func() { in.Close(fmt.Errorf("%w: receiving a frame took too long", ErrTimeout)) })
	in.timer.Stop()
	o := &offer{id: id, refuse: in.Close, link: in}
	if err := t.queue.offer(o); err != nil {
		return refusal(err)
	}
	select {
	case <-in.accepted:
	case <-in.closed:
		return refusal(in.cause)
	case <-stream.Context().Done():
		t.queue.withdraw(o)
		return stream.Context().Err()
	}
	select {
	case <-in.closed:
		return refusal(in.cause)
	case <-stream.Context().Done():
		in.Close(fmt.Errorf("%w: %w", ErrPeerClosed, context.Cause(stream.Context())))
		return nil
	}
}

func helloOf(ctx context.Context) (StreamID, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(helloKey)
	if len(v) != 1 {
		return StreamID{}, fmt.Errorf("%w: stream without %s metadata", ErrBadFrame, helloKey)
	}
	var h nicepb.RingHello
	if err := proto.Unmarshal([]byte(v[0]), &h); err != nil {
		return StreamID{}, fmt.Errorf("%w: reading the stream's hello: %w", ErrBadFrame, err)
	}
	return StreamID{
		Generation: h.Generation, From: Peer{ID: h.SenderId}, FromRank: int(h.SenderRank),
		To: Peer{ID: h.ReceiverId}, RingSize: int(h.RingSize),
	}, nil
}

// Accept implements RingTransport.
func (t *GRPCTransport) Accept(ctx context.Context, id StreamID) (RecvLink, error) {
	o, err := t.queue.accept(ctx, id)
	if err != nil {
		return nil, err
	}
	in := o.link.(*grpcIncoming)
	if err := t.track(in); err != nil {
		in.Close(err)
		return nil, fmt.Errorf("accepting from %s: %w", id.From, err)
	}
	close(in.accepted)
	in.ack.Generation = id.Generation
	if err := in.stream.SendMsg(&in.ack); err != nil {
		in.Close(fmt.Errorf("%w: %w", ErrPeerClosed, err))
		return nil, fmt.Errorf("accepting from %s: %w", id.From, err)
	}
	return in, nil
}

// grpcIncoming is the server end of a stream: it receives frames and sends
// acks. It is used by the member's goroutine while the handler waits.
type grpcIncoming struct {
	t        *GRPCTransport
	id       StreamID
	stream   nicepb.RingService_ExchangeServer
	accepted chan struct{}
	frame    inFrame
	ack      nicepb.RingAck
	timer    *time.Timer // breaks the link when a receive overruns

	closeOnce sync.Once
	closed    chan struct{}
	cause     error
}

// Close ends the stream: the handler returns, which cancels the stream and
// wakes a blocked RecvMsg; the dialer reads the cause in the status.
func (in *grpcIncoming) Close(cause error) {
	in.closeOnce.Do(func() {
		in.cause = cause
		close(in.closed)
		in.timer.Stop()
		in.t.untrack(in)
	})
}

func (in *grpcIncoming) closedErr() error {
	if errors.Is(in.cause, ErrTimeout) || errors.Is(in.cause, ErrPeerClosed) {
		return in.cause
	}
	return fmt.Errorf("%w: %w", ErrPeerClosed, in.cause)
}

func (in *grpcIncoming) Recv(want *FrameHeader, dst []float32, op Apply, deadline time.Time) error {
	select {
	case <-in.closed:
		return in.closedErr()
	default:
	}
	in.frame.want, in.frame.dst, in.frame.op = want, dst, op
	in.timer.Reset(time.Until(deadline))
	err := in.stream.RecvMsg(&in.frame)
	in.timer.Stop()
	in.frame.want, in.frame.dst = nil, nil
	if err != nil {
		select {
		case <-in.closed:
			return in.closedErr()
		default:
		}
		if err == io.EOF {
			err = errors.New("the sender ended the stream")
		}
		err = fmt.Errorf("%w: %w", ErrPeerClosed, err)
		in.Close(err)
		return err
	}
	return in.frame.err
}

func (in *grpcIncoming) Ack(seq uint64) error {
	select {
	case <-in.closed:
		return in.closedErr()
	default:
	}
	in.ack.Seq = seq
	if err := in.stream.SendMsg(&in.ack); err != nil {
		err = fmt.Errorf("%w: %w", ErrPeerClosed, err)
		in.Close(err)
		return err
	}
	return nil
}
