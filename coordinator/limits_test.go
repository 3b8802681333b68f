package coordinator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/rpcopt"
	"github.com/nice-flow/nice/internal/testwait"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// serveForLimits runs a coordinator of a tiny model (no data needed) with
// cfg's limits on loopback until the test ends, and returns it with a
// client connection.
func serveForLimits(t *testing.T, cfg Config) (*Server, *grpc.ClientConn) {
	t.Helper()
	tc := train.PaperConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 1, Hidden: 4, HiddenLayers: 1, Prior: flow.Logistic}
	cfg.Train, cfg.Listen, cfg.StateDir = tc, "127.0.0.1:0", t.TempDir()
	cfg.Machine = DefaultMachine()
	if cfg.Store == nil {
		cfg.Store = checkpoint.NewMemory(checkpoint.MemoryOptions{})
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ctx) })
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); cancel(); wg.Wait() })
	return srv, conn
}

// openSession opens a session and says Hello as worker id; it returns the
// stream once the Welcome came, or the error.
func openSession(ctx context.Context, conn *grpc.ClientConn, id string) (nicepb.Coordinator_SessionClient, error) {
	stream, err := nicepb.NewCoordinatorClient(conn).Session(ctx)
	if err != nil {
		return nil, err
	}
	hello := &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{WorkerId: id, Addr: "127.0.0.1:1", Incarnation: 1}}}
	if err := stream.Send(hello); err != nil {
		return nil, err
	}
	if _, err := stream.Recv(); err != nil {
		return nil, err
	}
	return stream, nil
}

// waitOpenSessions waits until the server counts n Session calls.
func waitOpenSessions(t *testing.T, s *Server, n int64) {
	t.Helper()
	testwait.For(t, 30*time.Second, fmt.Sprintf("%d sessions open", n), s.openSessions.Load, func(open int64) bool { return open == n })
}

// At most MaxSessions sessions are open at once: one more is refused with
// ResourceExhausted and a message saying why, and once a session ended a
// new one is taken. (Any number used to be taken.)
func TestSessionsAreBounded(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, conn := serveForLimits(t, Config{MaxSessions: 3})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstCtx, first := context.WithCancel(ctx)
	defer first()
	for i, id := range []string{"a", "b", "c"} {
		sctx := ctx
		if i == 0 {
			sctx = firstCtx
		}
		if _, err := openSession(sctx, conn, id); err != nil {
			t.Fatalf("session %d of 3: %v", i+1, err)
		}
	}
	_, err := openSession(ctx, conn, "d")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "3 sessions open, its limit") {
		t.Fatalf("a fourth session: got %v, want ResourceExhausted naming the limit", err)
	}
	t.Logf("refused: %v", err)
	first()
	waitOpenSessions(t, srv, 2)
	if _, err := openSession(ctx, conn, "d"); err != nil {
		t.Fatalf("a session after one ended: %v", err)
	}
}

// A session that does not say Hello within the session timeout is ended.
// (The coordinator used to wait for it for ever.)
func TestSessionWithoutHelloEnds(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	_, conn := serveForLimits(t, Config{SessionTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := nicepb.NewCoordinatorClient(conn).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "Hello within") {
		t.Fatalf("a session without Hello: got %v, want DeadlineExceeded from the coordinator", err)
	}
}

// blockedStream is the coordinator's end of a session whose worker says
// Hello, keeps sending heartbeats and never reads: every send after the
// Welcome blocks (as gRPC's does once the flow-control windows are full)
// until the call ends.
type blockedStream struct {
	grpc.ServerStream
	ctx   context.Context
	sends int
	beat  *time.Ticker
}

func (b *blockedStream) Context() context.Context { return b.ctx }

func (b *blockedStream) Send(*nicepb.CoordinatorMessage) error {
	b.sends++
	if b.sends == 1 {
		return nil // the Welcome
	}
	<-b.ctx.Done()
	return b.ctx.Err()
}

func (b *blockedStream) Recv() (*nicepb.WorkerMessage, error) {
	if b.beat == nil {
		b.beat = time.NewTicker(50 * time.Millisecond)
		return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{WorkerId: "reader-less", Addr: "127.0.0.1:1", Incarnation: 1}}}, nil
	}
	select {
	case <-b.beat.C:
		return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Heartbeat{Heartbeat: &nicepb.Heartbeat{}}}, nil
	case <-b.ctx.Done():
		b.beat.Stop()
		return nil, b.ctx.Err()
	}
}

func (b *blockedStream) SetHeader(metadata.MD) error  { return nil }
func (b *blockedStream) SendHeader(metadata.MD) error { return nil }
func (b *blockedStream) SetTrailer(metadata.MD)       {}

// A worker that keeps its session alive but does not read it is let go
// after the session timeout: the sends that block on it run on their own
// goroutine, and the session ends when one waited that long. (The
// coordinator's handler used to block in the send for ever, holding the
// session.)
func TestSessionOfAWorkerThatDoesNotReadEnds(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, _ := serveForLimits(t, Config{SessionTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan error, 1)
	go func() { ended <- (&rpc{s: srv}).Session(&blockedStream{ctx: ctx}) }()
	select {
	case err := <-ended:
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "has not taken a message") {
			t.Fatalf("the session ended with %v", err)
		}
		t.Logf("ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the session of a worker that does not read is still open after 30 s")
	}
	cancel() // as gRPC does when the handler returns: the blocked send ends
}

// slowListing is a store whose List runs until its call ends, announcing
// each call on entered.
type slowListing struct {
	checkpoint.Store
	entered chan struct{}
}

func (s slowListing) List(ctx context.Context) ([]checkpoint.Listing, error) {
	s.entered <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// Listing checkpoints reads every checkpoint whole: one listing runs at a
// time, another asked meanwhile is refused with ResourceExhausted.
func TestOneCheckpointListingAtATime(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	store := slowListing{Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), entered: make(chan struct{}, 2)}
	_, conn := serveForLimits(t, Config{Store: store})
	client := nicepb.NewCoordinatorClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := client.Checkpoints(ctx, &nicepb.CheckpointsRequest{})
		first <- err
	}()
	<-store.entered
	_, err := client.Checkpoints(context.Background(), &nicepb.CheckpointsRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a second listing meanwhile: got %v, want ResourceExhausted", err)
	}
	cancel()
	<-first
}

// A message larger than any a worker sends is refused by gRPC before the
// coordinator reads it. (The limit used to be gRPC's default of 4 MiB.)
func TestOversizedWorkerMessageIsRefused(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	_, conn := serveForLimits(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := openSession(ctx, conn, strings.Repeat("x", rpcopt.MaxWorkerMessage))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a Hello of %d bytes: got %v, want ResourceExhausted", rpcopt.MaxWorkerMessage, err)
	}
	t.Logf("refused: %v", err)
}
