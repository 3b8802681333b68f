package worker_test

import (
	"context"
	"github.com/nice-flow/nice/internal/testwait"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/worker"
)

// A worker whose coordinator is away is alive but not ready, on HTTP and
// on the gRPC health service, and its /metrics says so.
func TestWorkerWithoutCoordinatorIsAliveNotReady(t *testing.T) {
	defer goleak.VerifyNone(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	away := l.Addr().String()
	l.Close() // nothing listens there
	cfg := worker.DefaultConfig()
	cfg.ID, cfg.Coordinator, cfg.HTTP = "lonely", away, "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) (int, string) {
		t.Helper()
		// The HTTP server starts with Run: retry until it answers.
		var resp *http.Response
		if err := testwait.Poll(30*time.Second, "GET "+path, func() (err error) {
			resp, err = client.Get("http://" + w.HTTPAddr() + path)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: no session with the coordinator") {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "\nnice_worker_ready 0\n") ||
		!strings.Contains(body, "\nnice_worker_attached 0\n") || !strings.Contains(body, "\nnice_worker_rank -1\n") {
		t.Errorf("/metrics: %d, want nice_worker_ready 0, attached 0, rank -1:\n%s", code, body)
	}
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	for _, service := range []string{"", "nice.v1.RingService"} {
		r, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("gRPC health of %q: %v %v, want NOT_SERVING", service, r.GetStatus(), err)
		}
	}
}
