package session

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	nicepb "github.com/nice-flow/nice/proto"
)

// An in-memory session carries messages in order both ways,
// ends the worker's end when the coordinator's handler returns, and ends
// the handler when the worker's context is cancelled.
func TestInmemSession(t *testing.T) {
	defer goleak.VerifyNone(t)
	handlerDone := make(chan error, 1)
	d := Inmem(func(s nicepb.Coordinator_SessionServer) error {
		for i := 0; ; i++ {
			m, err := s.Recv()
			if err != nil {
				handlerDone <- err
				return err
			}
			if m.GetHello().GetWorkerId() == "bye" {
				handlerDone <- nil
				return nil // ends the session
			}
			if err := s.Send(&nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Welcome{Welcome: &nicepb.Welcome{CoordinatorIncarnation: uint64(i)}}}); err != nil {
				return err
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{WorkerId: "w"}}}
	for i := range 3 {
		if err := st.Send(hello); err != nil {
			t.Fatal(err)
		}
		m, err := st.Recv()
		if err != nil || m.GetWelcome().GetCoordinatorIncarnation() != uint64(i) {
			t.Fatalf("reply %d: %v, %v", i, m, err)
		}
	}
	if err := st.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{WorkerId: "bye"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, ErrEnded) {
		t.Fatalf("after the handler returned, Recv gave %v, want ErrEnded", err)
	}
	<-handlerDone

	// Cancelling the worker's context ends the handler.
	ctx2, cancel2 := context.WithCancel(context.Background())
	if _, err := d.Dial(ctx2); err != nil {
		t.Fatal(err)
	}
	cancel2()
	select {
	case err := <-handlerDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not end when the worker's context was cancelled")
	}
}
