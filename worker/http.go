package worker

import (
	"fmt"
	"io"
	"net/http"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/internal/rpcopt"
	nicepb "github.com/nice-flow/nice/proto"
)

// The worker's HTTP port (Config.HTTP) serves:
//
//	GET /healthz  200 "ok" while the worker's loop turns (alive); 503 if it
//	              has not turned for loopStall: the process is stuck and a
//	              restart is the cure.
//	GET /readyz   200 "ready: ..." or 503 "not ready: ..." (Machine.Readiness).
//	GET /metrics  Prometheus metrics (see metrics.go).
//
// The gRPC health service on the worker's gRPC port (service "" and
// nice.v1.RingService) says SERVING exactly when /readyz answers 200.

// newHTTPServer builds the worker's HTTP server, with the coordinator's
// bounds: a client holds a connection only for bounded times.
func (w *Worker) newHTTPServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", w.serveHealthz)
	mux.HandleFunc("GET /readyz", w.serveReadyz)
	mux.Handle("GET /metrics", w.metricsHandler())
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: rpcopt.MaxHeaderBytes}
}

func (w *Worker) serveHealthz(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if quiet, ok := w.turn.since(time.Now()); ok && quiet > loopStall {
		rw.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(rw, "stuck: the worker's event loop has not turned for %v\n", quiet.Round(time.Second))
		return
	}
	io.WriteString(rw, "ok\n")
}

func (w *Worker) serveReadyz(rw http.ResponseWriter, _ *http.Request) {
	ready, why := w.Readiness()
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if ready {
		fmt.Fprintf(rw, "ready: %s\n", why)
		return
	}
	rw.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(rw, "not ready: %s\n", why)
}

// noteStanding copies the machine's readiness and ring position for
// /readyz, /metrics and the gRPC health service (loop goroutine only).
func (w *Worker) noteStanding() {
	ready, why := w.m.Readiness()
	r := readiness{ready: ready, why: why, attached: w.m.HasSession(), rank: w.m.Rank(), size: w.m.RingSize(), generation: w.m.Generation()}
	w.obs.mu.Lock()
	changed := r.ready != w.obs.ready.ready || w.obs.ready.why == "starting"
	w.obs.ready = r
	w.obs.mu.Unlock()
	if !changed {
		return
	}
	v := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		v = healthpb.HealthCheckResponse_SERVING
	}
	for _, service := range []string{"", nicepb.RingService_ServiceDesc.ServiceName} {
		w.health.SetServingStatus(service, v)
	}
	w.log.Debug("readiness", "ready", ready, "why", why)
}
