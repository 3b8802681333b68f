package statexfer

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// A source that announces 8 GiB is refused at its first chunk, before the
// receiver allocates for it, with an error naming the source and both
// sizes. (The receiver used to accept any total up to 8 GiB and allocate
// it at once.)
func TestFetchRefusesAnAnnouncedSizeOutsideTheRun(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	want, err := ExpectConfig(train.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, announced := range []int64{8 << 30, want.Max + 1, want.Min - 1, -1} {
		conn := serve(t, &fakeSource{blob: make([]byte, 1000), size: announced})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := Fetch(context.Background(), conn, Request{Source: "peer-a:7001", Position: &nicepb.Position{Step: 7}, Size: want})
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("a state announced as %d bytes was accepted", announced)
		}
		for _, part := range []string{"peer-a:7001", "announced a state of", "to"} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("the refusal %q does not say %q", err, part)
			}
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 32<<20 {
			t.Errorf("refusing a state announced as %d bytes allocated %d bytes", announced, n)
		}
	}
}

// waitSource announces n bytes, then waits until released or its request
// ends, then writes them.
type waitSource struct {
	n       int64
	started chan struct{}
	release chan struct{}
}

func (w *waitSource) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), out io.Writer) error {
	size(w.n)
	w.started <- struct{}{}
	select {
	case <-w.release:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	_, err := out.Write(make([]byte, w.n))
	return err
}

// A source serves MaxTransfers at once and refuses more with
// ResourceExhausted; the refused receiver may retry once one ended.
func TestServerRefusesTransfersAboveItsLimit(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	src := &waitSource{n: 3 * ChunkBytes, started: make(chan struct{}, 4), release: make(chan struct{})}
	conn := serveWith(t, &Server{Src: src, Limits: ServeLimits{MaxTransfers: 2}})
	req := Request{Source: "src", Position: &nicepb.Position{Step: 7}, Size: Expect{Min: 1, Max: 3 * ChunkBytes}}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Fetch(context.Background(), conn, req)
			errs <- err
		}()
	}
	<-src.started
	<-src.started
	_, err := Fetch(context.Background(), conn, req)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "already serves 2 state transfers") {
		t.Fatalf("a third transfer gave %v, want ResourceExhausted", err)
	}
	close(src.release)
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("a transfer within the limit failed: %v", err)
		}
	}
	go func() { <-src.started }()
	if _, err := Fetch(context.Background(), conn, req); err != nil {
		t.Fatalf("a transfer after the others ended failed: %v", err)
	}
}

// logSignal is a slog handler that hands each record's message to a channel.
type logSignal struct{ msgs chan string }

func (l logSignal) Enabled(context.Context, slog.Level) bool { return true }
func (l logSignal) Handle(_ context.Context, r slog.Record) error {
	select {
	case l.msgs <- r.Message:
	default:
	}
	return nil
}
func (l logSignal) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logSignal) WithGroup(string) slog.Handler      { return l }

// stepSource serves a state of sizes[step] zero bytes.
type stepSource map[int64]int

func (s stepSource) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), out io.Writer) error {
	n, ok := s[pos.GetStep()]
	if !ok {
		return ErrUnavailable
	}
	size(int64(n))
	_, err := out.Write(make([]byte, n))
	return err
}

// A receiver that opens a transfer and never reads holds it only for
// SendTimeout: the source abandons it, frees its slot (the limit here is
// one) and serves the next receiver.
func TestServerAbandonsAReceiverThatDoesNotRead(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	logs := logSignal{msgs: make(chan string, 16)}
	// Step 7 is far more than the flow-control windows; step 8 fits one chunk.
	src := stepSource{7: 64 << 20, 8: 1000}
	srv := &Server{Src: src, Limits: ServeLimits{MaxTransfers: 1, SendTimeout: 200 * time.Millisecond}, Logger: slog.New(logs)}
	conn := serveWith(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := nicepb.NewStateServiceClient(conn).FetchState(ctx, &nicepb.FetchStateRequest{Position: &nicepb.Position{Step: 7}}); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-logs.msgs:
		if msg != "state transfer abandoned" {
			t.Fatalf("the source logged %q", msg)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the source still serves a receiver that has not read for 30 s")
	}
	srv.Wait() // the sender of the abandoned transfer returned
	got, err := Fetch(context.Background(), conn, Request{Source: "src", Position: &nicepb.Position{Step: 8}, Size: Expect{Min: 1, Max: 1000}})
	if err != nil || len(got) != 1000 {
		t.Fatalf("the next transfer got %d bytes, err %v", len(got), err)
	}
}

// A transfer that does not end within TransferTimeout (here: a snapshot
// that never comes) is ended by the source, which says why.
func TestServerEndsATransferPastItsTimeout(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	src := &waitSource{n: 10, started: make(chan struct{}, 1), release: make(chan struct{})}
	conn := serveWith(t, &Server{Src: src, Limits: ServeLimits{TransferTimeout: 200 * time.Millisecond}, Logger: slog.New(logSignal{msgs: make(chan string, 1)})})
	_, err := Fetch(context.Background(), conn, Request{Source: "src", Position: &nicepb.Position{Step: 7}, Size: Expect{Min: 1, Max: 10}})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "longer than its limit") {
		t.Fatalf("a transfer past its timeout gave %v", err)
	}
}
