package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/internal/creds"
	nicepb "github.com/nice-flow/nice/proto"
)

// fakeCoordinator answers Status with st, or with err.
type fakeCoordinator struct {
	nicepb.UnimplementedCoordinatorServer
	st  coordinator.Status
	err error
}

func (f *fakeCoordinator) Status(context.Context, *nicepb.StatusRequest) (*nicepb.StatusReply, error) {
	if f.err != nil {
		return nil, f.err
	}
	b, err := json.Marshal(f.st)
	return &nicepb.StatusReply{Json: b}, err
}

// serveGRPC serves srv (nil: no service) with the credentials b (nil:
// plaintext) on loopback until the test ends, and returns its address.
func serveGRPC(t *testing.T, b *creds.Bundle, srv nicepb.CoordinatorServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Refused handshakes are logged; not into the test's output.
	g := grpc.NewServer(b.ServerOption(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if srv != nil {
		nicepb.RegisterCoordinatorServer(g, srv)
	}
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return lis.Addr().String()
}

// serveTCP accepts connections on loopback and hands each to handle, until
// the test ends; it returns the address.
func serveTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return lis.Addr().String()
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// askStatus asks addr for the status as `nice-coord status` does, with
// credentials b (nil: plaintext), waiting at most timeout for each answer.
func askStatus(t *testing.T, addr string, b *creds.Bundle, timeout time.Duration) (*coordinator.Status, error) {
	t.Helper()
	client, closeConn, err := dialCoordinator(addr, b)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	client.reach.timeout = timeout
	client.reach.tlsDir = "/creds/of/this/client"
	return fetchStatus(context.Background(), client)
}

// Each way a status call fails gets its own error, saying what to do,
// against real listeners.
func TestStatusSaysWhyTheCoordinatorDoesNotAnswer(t *testing.T) {
	ours, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	silentTCP := func(c net.Conn) { c.Read(make([]byte, 1)) } // reads until closed, says nothing
	closingTCP := func(c net.Conn) { c.Close() }
	garbageTCP := func(c net.Conn) { c.Write([]byte("220 welcome to some other service\r\n")); c.Close() }
	httpSrv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(httpSrv.Close)
	// A short wait for each answer: the silent listeners cost that long.
	const timeout = 500 * time.Millisecond

	tests := []struct {
		name  string
		addr  string
		creds *creds.Bundle
		want  error
		says  []string
	}{
		{"closed port, plaintext", closedPort(t), nil, errNothingListens,
			[]string{"refused the connection", "is the coordinator running?", "--addr"}},
		{"closed port, TLS", closedPort(t), ours, errNothingListens, []string{"refused the connection"}},
		{"TLS to a plain TCP listener that closes", serveTCP(t, closingTCP), ours, errRefusedTLS,
			[]string{"does not speak TLS", "--insecure"}},
		{"TLS to a plain TCP listener that answers in plain text", serveTCP(t, garbageTCP), ours, errRefusedTLS,
			[]string{"does not speak TLS"}},
		{"TLS to a listener that never speaks", serveTCP(t, silentTCP), ours, errTimedOut,
			[]string{"took the connection but did not answer the TLS handshake", "gRPC address"}},
		{"plaintext to a listener that never speaks", serveTCP(t, silentTCP), nil, errTimedOut,
			[]string{"took the connection but did not answer"}},
		{"plaintext to a listener that closes", serveTCP(t, closingTCP), nil, errNotGRPC,
			[]string{"closed the connection without answering"}},
		{"plaintext to a listener that answers in plain text", serveTCP(t, garbageTCP), nil, errNotGRPC,
			[]string{"220 welcome", "not as a gRPC server"}},
		{"TLS to a server of another CA", serveGRPC(t, theirs, &fakeCoordinator{}), ours, errRefusedTLS,
			[]string{"certificate that the cluster CA in /creds/of/this/client did not sign", "another cluster's", "--tls-dir"}},
		{"plaintext to a TLS server", serveGRPC(t, ours, &fakeCoordinator{}), nil, errRefusedTLS,
			[]string{"requires TLS", "--tls-dir"}},
		{"TLS to a plaintext server", serveGRPC(t, nil, &fakeCoordinator{}), ours, errRefusedTLS,
			[]string{"runs without credentials", "--insecure"}},
		{"plaintext to an HTTP server", strings.TrimPrefix(httpSrv.URL, "http://"), nil, errNotGRPC,
			[]string{"answered in HTTP/1, not as a gRPC server", "HTTP port"}},
		{"a coordinator answering with an error", serveGRPC(t, ours, &fakeCoordinator{err: status.Error(codes.FailedPrecondition, "the dog ate the status")}),
			ours, errAnswered, []string{"answered FailedPrecondition: the dog ate the status"}},
		{"a coordinator answering Unavailable", serveGRPC(t, nil, &fakeCoordinator{err: status.Error(codes.Unavailable, "stopping")}),
			nil, errAnswered, []string{"answered Unavailable: stopping"}},
		{"a gRPC server without the coordinator's service", serveGRPC(t, nil, nil), nil, errAnswered,
			[]string{"answered Unimplemented", "other than the coordinator"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := askStatus(t, tc.addr, tc.creds, timeout)
			t.Log(err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("status gave %v (status %+v); want an error of the class %q", err, st, tc.want)
			}
			for _, s := range append(tc.says, tc.addr) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("the error does not say %q: %v", s, err)
				}
			}
			for _, other := range []error{errNothingListens, errRefusedTLS, errTimedOut, errNotGRPC, errAnswered} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("the error is also of the class %q: %v", other, err)
				}
			}
		})
	}
}

// A coordinator that answers gives its status, with TLS and without.
func TestStatusOfACoordinatorThatAnswers(t *testing.T) {
	ours, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*creds.Bundle{nil, ours} {
		want := coordinator.Status{Phase: "running", Step: 42, StepsTotal: 100, ETASeconds: 12.5}
		st, err := askStatus(t, serveGRPC(t, b, &fakeCoordinator{st: want}), b, 10*time.Second)
		if err != nil {
			t.Fatalf("credentials %v: %v", b != nil, err)
		}
		if st.Phase != want.Phase || st.Step != want.Step || st.StepsTotal != want.StepsTotal || st.ETASeconds != want.ETASeconds {
			t.Fatalf("credentials %v: status %+v, want %+v", b != nil, st, want)
		}
	}
}
