package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/logbuf"
	"github.com/nice-flow/nice/internal/testwait"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// obsCluster is a coordinator and two workers in this process, over gRPC on
// loopback, each with its HTTP port.
type obsCluster struct {
	srv     *coordinator.Server
	workers []*worker.Worker
	log     *logbuf.Buffer
}

func startObsCluster(t *testing.T, stopAt int64) *obsCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	t.Cleanup(func() { // registered first: runs after every other cleanup
		if err := testwait.Poll(10*time.Second, "goroutines to end", func() error {
			return goleak.Find(goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
		}); err != nil {
			t.Error(err)
		}
	})
	e := &obsCluster{log: &logbuf.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.log)
		}
	})
	log := slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.MinWorkers = 2
	mc.StopAt = stopAt
	mc.CheckpointEvery = 4
	var err error
	e.srv, err = coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", StateDir: t.TempDir(),
		Machine: mc, Logger: log.With("process", "coordinator")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); e.srv.Serve(ctx) }()
	for _, id := range []string{"a", "b"} {
		cfg := worker.DefaultConfig()
		cfg.ID, cfg.Coordinator, cfg.HTTP = id, e.srv.Addr(), "127.0.0.1:0"
		cfg.Logger = log
		w, err := worker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		e.workers = append(e.workers, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	return e
}

// waitFor polls the coordinator's status until cond holds (three minutes
// at most: the machine is shared).
func (e *obsCluster) waitFor(t *testing.T, what string, cond func(coordinator.Status) bool) coordinator.Status {
	t.Helper()
	deadline := time.NewTimer(3 * time.Minute)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st := e.srv.Status()
		if cond(st) {
			return st
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("no %s within three minutes: phase %s, step %d", what, st.Phase, st.Step)
		}
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads GET /metrics, has promtool check it (when installed), and
// parses it.
func scrape(t *testing.T, who, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s: GET /metrics answers %d: %s", who, code, body)
	}
	promtool(t, who, body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: /metrics does not parse: %v", who, err)
	}
	return fams
}

// promtool runs `promtool check metrics` on a scrape: its linter checks the
// exposition format and the naming conventions (counters end in _total,
// base units, help text).
func promtool(t *testing.T, who, body string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Logf("promtool is not installed (Debian: apt-get install prometheus): `promtool check metrics` skipped for %s", who)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("promtool check metrics on %s's /metrics: %v\n%s", who, err, out.String())
		return
	}
	t.Logf("promtool check metrics on %s's /metrics: passed (%d lines)", who, strings.Count(body, "\n"))
}

// value is the value of the series of family name whose labels include
// the pairs given (name=value, ...).
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
series:
	for _, m := range f.Metric {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no series of %s with %v", name, labels)
	return 0
}

// Both /metrics outputs pass `promtool check metrics` after some steps, and
// say what /status says: steps committed, generation, workers and step.
func TestMetricsAgreeWithStatus(t *testing.T) {
	const stop = 6
	e := startObsCluster(t, stop)
	e.waitFor(t, "hold at step 6 with its checkpoint", func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == stop && st.LastCheckpointStep == stop
	})
	// What GET /status says, as a client reads it.
	code, body := httpGet(t, e.srv.HTTPAddr(), "/status")
	var st coordinator.Status
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil {
		t.Fatalf("GET /status: %d %v: %s", code, err, body)
	}

	c := scrape(t, "the coordinator", e.srv.HTTPAddr())
	for _, x := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nice_coordinator_steps_committed_total", nil, float64(st.CommittedSteps)},
		{"nice_coordinator_step", nil, stop},
		{"nice_coordinator_generation", nil, float64(st.Generation)},
		{"nice_coordinator_generations_total", nil, float64(st.Generations)},
		{"nice_coordinator_steps_redone_total", nil, float64(st.RedoneSteps)},
		{"nice_coordinator_workers", []string{"state=training"}, 2},
		{"nice_coordinator_phase", []string{"phase=holding"}, 1},
		{"nice_coordinator_phase", []string{"phase=running"}, 0},
		{"nice_coordinator_ring_members", nil, 2},
		{"nice_coordinator_checkpoint_step", nil, stop},
		{"nice_coordinator_refused_messages_total", []string{"reason=invalid"}, 0},
		{"nice_coordinator_ready", nil, 1},
		{"nice_coordinator_healthy", nil, 1},
		{"nice_coordinator_samples_committed_total", nil, float64(st.CommittedSteps * 256)},
		{"nice_coordinator_step_compute_seconds", nil, float64(st.CommittedSteps)},
		{"nice_coordinator_allreduce_duration_seconds", nil, float64(st.CommittedSteps)},
	} {
		if got := value(t, c, x.name, x.labels...); got != x.want {
			t.Errorf("coordinator %s%v = %v, want %v (status: committed %d, generation %d)", x.name, x.labels, got, x.want, st.CommittedSteps, st.Generation)
		}
	}
	if st.CommittedSteps != stop {
		t.Errorf("committed %d steps, want %d", st.CommittedSteps, stop)
	}
	if n := value(t, c, "nice_coordinator_checkpoint_write_duration_seconds"); n < 1 {
		t.Errorf("no checkpoint write observed, with the checkpoint at step %d stored", st.LastCheckpointStep)
	}
	for _, f := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if c[f] == nil {
			t.Errorf("coordinator: no %s (the Go and process collectors)", f)
		}
	}

	var applied float64
	for _, w := range e.workers {
		m := scrape(t, "worker "+w.ID(), w.HTTPAddr())
		if g := value(t, m, "nice_worker_generation"); g != float64(st.Generation) {
			t.Errorf("worker %s: generation %v, the coordinator's %d", w.ID(), g, st.Generation)
		}
		if s := value(t, m, "nice_worker_step"); s != stop {
			t.Errorf("worker %s: step %v, want %d", w.ID(), s, stop)
		}
		if r := value(t, m, "nice_worker_rank"); r < 0 || r > 1 {
			t.Errorf("worker %s: rank %v in a ring of 2", w.ID(), r)
		}
		if n := value(t, m, "nice_worker_ready"); n != 1 {
			t.Errorf("worker %s: not ready while held in its generation", w.ID())
		}
		// The ring moves 2(N-1)/N of the gradient per step each way: with
		// two members, the whole gradient once, as 4-byte floats.
		params := float64(len(e.workers[0].State().Params))
		steps := value(t, m, "nice_worker_steps_computed_total")
		for _, dir := range []string{"sent", "received"} {
			if b := value(t, m, "nice_worker_ring_"+dir+"_bytes_total"); b != steps*4*params {
				t.Errorf("worker %s: ring %s %v bytes in %v steps, want %v (4 bytes × %v floats a step)", w.ID(), dir, b, steps, steps*4*params, params)
			}
		}
		if n := value(t, m, "nice_worker_compute_duration_seconds"); n != steps {
			t.Errorf("worker %s: %v compute durations observed in %v steps", w.ID(), n, steps)
		}
		if n := value(t, m, "nice_worker_commit_wait_seconds"); n < stop {
			t.Errorf("worker %s: %v commit waits observed, want at least %d", w.ID(), n, stop)
		}
		applied += value(t, m, "nice_worker_steps_applied_total")
	}
	if applied != 2*stop {
		t.Errorf("the workers applied %v steps in all, want %d", applied, 2*stop)
	}
}

// Readiness follows the run: a coordinator without enough workers is alive
// but not ready; training (and holding as asked) it is ready; the workers
// are ready in their generation; the gRPC health services say the same as
// /readyz.
func TestReadinessTransitions(t *testing.T) {
	const stop = 3
	e := startObsCluster(t, stop)
	// The coordinator answers before any worker is planned in; the first
	// answers may already see a generation, so only the held state is
	// asserted after the start.
	if code, body := httpGet(t, e.srv.HTTPAddr(), "/healthz"); code != http.StatusOK {
		t.Errorf("coordinator /healthz: %d %q", code, body)
	}
	e.waitFor(t, "hold at step 3", func(st coordinator.Status) bool { return st.Phase == "holding" && st.Step == stop })
	if code, body := httpGet(t, e.srv.HTTPAddr(), "/readyz"); code != http.StatusOK || !strings.HasPrefix(body, "ready: holding at step 3 as asked") {
		t.Errorf("coordinator held as asked: /readyz %d %q", code, body)
	}
	for _, w := range e.workers {
		code, body := httpGet(t, w.HTTPAddr(), "/readyz")
		if code != http.StatusOK || !strings.HasPrefix(body, "ready: ") {
			t.Errorf("worker %s: /readyz %d %q", w.ID(), code, body)
		}
		if code, body := httpGet(t, w.HTTPAddr(), "/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("worker %s: /healthz %d %q", w.ID(), code, body)
		}
		checkGRPCHealth(t, "worker "+w.ID(), w.Addr(), healthpb.HealthCheckResponse_SERVING, "", "nice.v1.RingService")
	}
	checkGRPCHealth(t, "coordinator", e.srv.Addr(), healthpb.HealthCheckResponse_SERVING, "", "nice.v1.Coordinator")
}

// checkGRPCHealth waits until the gRPC health of each service at addr is
// want. The verdict is set just after the status changes, one service
// after the other, so it is waited for rather than read once.
func checkGRPCHealth(t *testing.T, who, addr string, want healthpb.HealthCheckResponse_ServingStatus, services ...string) {
	t.Helper()
	conn := dial(t, addr, column{dial: grpc.WithTransportCredentials(insecure.NewCredentials())})
	defer conn.Close()
	err := testwait.Poll(30*time.Second, who+"'s gRPC health to be "+want.String(), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range services {
			r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: s})
			if err != nil {
				return fmt.Errorf("gRPC health of %q: %w", s, err)
			}
			if r.Status != want {
				return fmt.Errorf("gRPC health of %q is %v", s, r.Status)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
