package ring

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// pendingAtLeast waits until q holds n announced streams.
func pendingAtLeast(t *testing.T, q *acceptQueue, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		q.mu.Lock()
		have, changed := len(q.pending), q.changed
		q.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%d streams wait to be accepted, want %d", have, n)
		}
	}
}

// Announced streams of generations to come wait in a queue of at most
// MaxPending: a peer announcing a thousand is refused from the first one
// past the limit on, and the queue takes streams again once one left it.
// (The queue used to hold any number.)
func TestAcceptQueueBoundsPendingStreams(t *testing.T) {
	q := newAcceptQueue()
	defer q.shutdown(ErrClosed)
	limit := DefaultStreamLimits().MaxPending
	refusals := 0
	var first error
	for i := range 1000 {
		id := StreamID{Generation: uint64(10 + i), From: Peer{ID: fmt.Sprintf("intruder-%d", i)}, To: Peer{ID: "w1"}, RingSize: 2}
		err := q.offer(&offer{id: id, refuse: func(error) {}})
		switch {
		case i < limit && err != nil:
			t.Fatalf("stream %d of %d refused: %v", i+1, limit, err)
		case i >= limit && !errors.Is(err, ErrTooManyStreams):
			t.Fatalf("stream %d beyond the limit of %d: got %v, want ErrTooManyStreams", i+1, limit, err)
		case err != nil:
			refusals++
			if first == nil {
				first = err
			}
		}
	}
	if refusals != 1000-limit {
		t.Fatalf("%d refusals, want %d", refusals, 1000-limit)
	}
	t.Logf("refused: %v", first)
	// The member accepts its stream of generation 10: a slot frees.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := q.accept(ctx, StreamID{Generation: 10, From: Peer{ID: "intruder-0"}, To: Peer{ID: "w1"}, RingSize: 2}); err != nil {
		t.Fatal(err)
	}
	if err := q.offer(&offer{id: StreamID{Generation: 2000, From: Peer{ID: "w0"}, To: Peer{ID: "w1"}, RingSize: 2}, refuse: func(error) {}}); err != nil {
		t.Fatalf("a stream offered once a slot freed: %v", err)
	}
}

// A stream that is not accepted within PendingTimeout is refused, with
// ErrTimeout, and leaves the queue. (It used to wait for as long as its
// dialer kept it open.)
func TestAcceptQueueRefusesStreamsThatWaitTooLong(t *testing.T) {
	q := newAcceptQueue()
	defer q.shutdown(ErrClosed)
	q.setLimits(StreamLimits{MaxPending: 4, PendingTimeout: 50 * time.Millisecond})
	refused := make(chan error, 1)
	id := StreamID{Generation: 99, From: Peer{ID: "w0"}, To: Peer{ID: "w1"}, RingSize: 2}
	if err := q.offer(&offer{id: id, refuse: func(err error) { refused <- err }}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("refused with %v, want ErrTimeout", err)
		}
		t.Logf("refused: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("a stream nobody accepts still waits after 30 s")
	}
	q.mu.Lock()
	left := len(q.pending)
	q.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d streams still wait", left)
	}
}

// Over gRPC, a stream beyond the limit is refused at once with
// ResourceExhausted, which the dialer sees as ErrTooManyStreams.
func TestGRPCRefusesStreamsBeyondTheLimit(t *testing.T) {
	verifyNoLeaks(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions()...)
	target := NewGRPCTransport()
	target.SetStreamLimits(StreamLimits{MaxPending: 2, PendingTimeout: time.Hour})
	target.RegisterServer(srv)
	go srv.Serve(lis)
	dialer := NewGRPCTransport()
	t.Cleanup(func() { dialer.Close(); target.Close(); srv.Stop() })
	to := Peer{ID: "w1", Addr: lis.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := dialer.Dial(ctx, StreamID{Generation: uint64(5 + i), From: Peer{ID: "w0"}, To: to, RingSize: 2})
			waiting <- err
		}()
		pendingAtLeast(t, target.queue, i+1)
	}
	_, err = dialer.Dial(ctx, StreamID{Generation: 7, From: Peer{ID: "w0"}, To: to, RingSize: 2})
	if !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("a third waiting stream: got %v, want ErrTooManyStreams", err)
	}
	t.Logf("refused: %v", err)
	cancel()
	for range 2 {
		<-waiting
	}
}
