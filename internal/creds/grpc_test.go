package creds

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/internal/logbuf"
)

// serve starts a gRPC health server with b's ServerOption on loopback and
// returns its address and its log.
func serve(t *testing.T, b *Bundle) (string, *logbuf.Buffer) {
	t.Helper()
	logs := &logbuf.Buffer{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Every refusal logged, so that each case's reason can be read.
	srv := grpc.NewServer(b.serverOption(slog.New(slog.NewTextHandler(logs, nil)), 0))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String(), logs
}

// check calls Health.Check at addr with dial; nil means the server
// answered.
func check(t *testing.T, addr string, dial grpc.DialOption) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestMutualTLS(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // registered first: runs after the servers stop
	ours, theirs := generate(t), generate(t)
	addr, logs := serve(t, ours)
	// A client of another cluster that trusts our CA and presents its own
	// certificate whatever CAs the server names (Go's client would
	// otherwise send none), so the refusal is the server's verdict on it.
	foreign := theirs.ClientTLS()
	foreign.RootCAs = ours.pool
	foreign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &theirs.cert, nil }
	noCert := ours.ClientTLS()
	noCert.Certificates = nil
	cases := []struct {
		name      string
		dial      grpc.DialOption
		clientHas string // what the client's error says ("" when the call must succeed)
		serverHas string // what the server logs
	}{
		{"the cluster's credentials", ours.DialOption(), "", ""},
		// The client's error depends on whether it reads the alert or
		// writes into the closed socket first; the server's reason does not.
		{"plaintext", (*Bundle)(nil).DialOption(), "Unavailable", "first record does not look like a TLS handshake"},
		{"TLS without a client certificate", grpc.WithTransportCredentials(credentials.NewTLS(noCert)), "Unavailable", "client didn't provide a certificate"},
		{"a certificate of another CA", grpc.WithTransportCredentials(credentials.NewTLS(foreign)), "Unavailable", "certificate signed by unknown authority"},
		{"a client that trusts another CA", theirs.DialOption(), "certificate signed by unknown authority", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := logs.Len()
			err := check(t, addr, c.dial)
			if c.clientHas == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), c.clientHas) {
				t.Fatalf("err = %v; want Unavailable saying %q", err, c.clientHas)
			}
			if c.serverHas == "" {
				return
			}
			// The server's log line may follow the client's error.
			logs.WaitFor(t, before, c.serverHas, 10*time.Second)
			if !strings.Contains(logs.From(before), "refused a connection at the TLS handshake") {
				t.Errorf("the server's refusal is not logged as one: %s", logs.From(before))
			}
		})
	}
}

func TestPlaintextServerRefusesTLSClients(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // registered first: runs after the servers stop
	addr, _ := serve(t, nil)
	if err := check(t, addr, (*Bundle)(nil).DialOption()); err != nil {
		t.Fatalf("plaintext to plaintext: %v", err)
	}
	if err := check(t, addr, generate(t).DialOption()); status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS client to a plaintext server: %v; want Unavailable", err)
	}
}

func TestRefusalsAreRateLimited(t *testing.T) {
	logs := &logbuf.Buffer{}
	r := &refusals{log: slog.New(slog.NewTextHandler(logs, nil)), limiter: &RefusalLimiter{Every: time.Hour, PerEvery: 3}}
	a, b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 2}
	for range 5 {
		r.note(a, context.DeadlineExceeded)
	}
	r.note(b, context.DeadlineExceeded)
	if n := strings.Count(logs.String(), "refused a connection"); n != 2 || !strings.Contains(logs.String(), "from=10.0.0.2:2") {
		t.Fatalf("5 refusals from one host and 1 from another logged %d lines, want one per host:\n%s", n, logs)
	}
	r.note(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 3), Port: 3}, context.DeadlineExceeded)
	r.note(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 4), Port: 4}, context.DeadlineExceeded)
	if n := strings.Count(logs.String(), "refused a connection"); n != 3 {
		t.Fatalf("with PerEvery 3, %d lines were logged, want 3:\n%s", n, logs)
	}
	r.limiter.windowStart = time.Time{} // the interval has passed
	r.limiter.hosts["10.0.0.1"].last = time.Time{}
	r.note(a, context.DeadlineExceeded)
	if !strings.Contains(logs.String(), "more_refused_from_this_host_since_last_line=4") {
		t.Fatalf("the next line of the first host does not count its 4 not logged:\n%s", logs)
	}
}
