package rpcopt_test

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/internal/rpcopt"
	nicepb "github.com/nice-flow/nice/proto"
)

// stuckStatus answers Status only when its call ends.
type stuckStatus struct {
	nicepb.UnimplementedCoordinatorServer
}

func (stuckStatus) Status(ctx context.Context, _ *nicepb.StatusRequest) (*nicepb.StatusReply, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

// A unary call whose client set no deadline still ends on the server's
// side after UnaryTimeout.
func TestUnaryTimeoutEndsCallsWithoutDeadline(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(rpcopt.UnaryTimeout(100 * time.Millisecond))
	nicepb.RegisterCoordinatorServer(srv, stuckStatus{})
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); srv.Stop() })
	done := make(chan error, 1)
	go func() {
		_, err := nicepb.NewCoordinatorClient(conn).Status(context.Background(), &nicepb.StatusRequest{})
		done <- err
	}()
	select {
	case err := <-done:
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a unary call without a client deadline still runs after 30 s")
	}
}
