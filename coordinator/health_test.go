package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/train"
)

// A coordinator without workers whose checkpoint writer reports results
// straight to it (as the writer's goroutine does).
func idleServer(t *testing.T) *Server {
	t.Helper()
	tc := train.PaperConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	s, err := New(Config{Train: tc, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", StateDir: t.TempDir(), Machine: DefaultMachine(),
		Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func grpcHealth(t *testing.T, s *Server) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	r, err := s.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "nice.v1.Coordinator"})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status
}

func healthz(t *testing.T, s *Server) (int, string) {
	t.Helper()
	return getPath(t, s, "/healthz")
}

func getPath(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, b := get(t, "http://"+s.HTTPAddr()+path)
	return resp.StatusCode, string(b)
}

func result(step uint64, err error) checkpoint.Result {
	return checkpoint.Result{Meta: checkpoint.Meta{Step: step, Time: time.Now()}, Info: checkpoint.Info{Size: 1}, Err: err}
}

// Write outcomes drive the status and both health answers: a failure
// degrades them, a superseded checkpoint or an older one stored does not
// clear it, a checkpoint at or after the failed step does.
func TestCheckpointResultsDriveHealth(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
	s := idleServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	// Alive, but idle without workers: not ready, and gRPC says so.
	if code, body := healthz(t, s); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("a fresh coordinator is not healthy: %d %q", code, body)
	}
	if code, body := getPath(t, s, "/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: idle") ||
		grpcHealth(t, s) != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("a coordinator without workers: /readyz %d %q, gRPC %v; want not ready", code, body, grpcHealth(t, s))
	}
	full := fmt.Errorf("writing chunk 3: %w", syscall.ENOSPC)
	steps := []struct {
		name     string
		result   checkpoint.Result
		degraded bool
		failures int
	}{
		{"write of step 20 fails", result(20, full), true, 1},
		{"superseded: not a failure", result(25, checkpoint.ErrSuperseded), true, 1},
		{"write of step 30 fails", result(30, full), true, 2},
		{"an older checkpoint is stored", result(10, nil), true, 2},
		{"step 30 is stored", result(30, nil), false, 0},
	}
	for _, step := range steps {
		s.onSaved(step.result)
		st := s.Status()
		code, body := healthz(t, s)
		gs := grpcHealth(t, s)
		if !step.degraded {
			if st.LastCheckpointError != nil || code != http.StatusOK || gs != healthpb.HealthCheckResponse_NOT_SERVING || st.Health != "ok" {
				t.Errorf("%s: still degraded: %+v, /healthz %d %q, gRPC %v", step.name, st.LastCheckpointError, code, body, gs)
			}
			continue
		}
		p := st.LastCheckpointError
		if p == nil || p.Failures != step.failures || !strings.Contains(p.Error, "no space left on device") {
			t.Errorf("%s: last_checkpoint_error %+v, want %d failures", step.name, p, step.failures)
			continue
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, fmt.Sprintf("the checkpoint at step %d was not written", p.Step)) ||
			gs != healthpb.HealthCheckResponse_NOT_SERVING || !strings.HasPrefix(st.Health, "degraded: ") {
			t.Errorf("%s: /healthz %d %q, gRPC %v, status health %q; want degraded", step.name, code, body, gs, st.Health)
		}
		if code, body := getPath(t, s, "/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: degraded: checkpoint writes fail") {
			t.Errorf("%s: /readyz %d %q; want not ready, degraded", step.name, code, body)
		}
	}
}

// The status always carries the problem fields, null when all is well.
func TestStatusJSONNamesTheProblemFields(t *testing.T) {
	b, err := json.Marshal(Status{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"last_checkpoint_error", "ledger_error", "ledger_lines_lost", "health"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, b)
		}
	}
}

// Serve, stopped with the state training reached not stored, says which
// checkpoint stands and why.
func TestFinalCheckpointError(t *testing.T) {
	full := errors.New("no space left on device")
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name     string
		st       Status
		timedOut bool
		want     []string // in the error; none: no error
	}{
		{name: "stored", st: Status{Step: 40, LastCheckpointStep: 40, lastCheckpointTime: since}},
		{name: "nothing trained, nothing stored", st: Status{}},
		{name: "write failed", st: Status{Step: 40, LastCheckpointStep: 30, lastCheckpointTime: since,
			LastCheckpointError: &Problem{Error: full.Error(), Step: 40, Since: since, Failures: 3}},
			want: []string{"step 40, is not stored", "the checkpoint at step 30 stands", "failures: 3 since 2026-01-02T03:04:05Z", "no space left on device"}},
		{name: "nothing ever stored", st: Status{Step: 3, LastCheckpointError: &Problem{Error: full.Error(), Step: 3, Since: since, Failures: 1}},
			want: []string{"no checkpoint stands", "no space left on device"}},
		{name: "timed out", st: Status{Step: 40, LastCheckpointStep: 30, lastCheckpointTime: since}, timedOut: true,
			want: []string{"the checkpoint at step 30 stands", "within 30s"}},
		{name: "no worker held it", st: Status{Step: 40, LastCheckpointStep: 30, lastCheckpointTime: since},
			want: []string{"the checkpoint at step 30 stands", "no worker held it"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{status: tc.st}
			err := s.finalCheckpointError(tc.timedOut, 30*time.Second)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("error %v, want none", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want one saying %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// A failed write has the machine take a checkpoint at its next commit; while
// writes keep failing, the retries are spaced by SaveRetry; a held run is
// left to the machine's own retries.
func TestFailedCheckpointIsRetriedByTheNextCommit(t *testing.T) {
	c := newSimCluster(t, simConfig(), "a", "b")
	c.start()
	c.runUntilNext(2)
	s := &Server{m: c.m, log: slog.New(slog.NewTextHandler(io.Discard, nil)), cfg: Config{Machine: MachineConfig{SaveRetry: time.Second}}}
	t0 := c.now
	steps := []struct {
		name   string
		after  time.Duration // since t0
		failed bool          // a write failed before the loop looks
		retry  bool          // the next commit takes a checkpoint
	}{
		{"first failure: at once", 0, true, true},
		{"nothing failed", 100 * time.Millisecond, false, false},
		{"another failure, too soon", 500 * time.Millisecond, true, false},
		{"still pending, SaveRetry later", time.Second, false, true},
	}
	for _, step := range steps {
		if step.failed {
			s.retryCheckpoint = true
		}
		s.retryFailedCheckpoint(t0.Add(step.after))
		next := c.m.Next().Step
		c.runUntilNext(next + 1)
		if got := c.ledger[len(c.ledger)-1]; got.Position.Step != next || got.Snapshot != step.retry {
			t.Fatalf("%s: the commit of step %d carries a snapshot: %v, want %v", step.name, next, got.Snapshot, step.retry)
		}
	}
	c.m.phase = Holding
	s.retryCheckpoint = true
	s.retryFailedCheckpoint(t0.Add(time.Hour))
	if c.m.snapshotWanted {
		t.Error("a held run was asked for a snapshot at a commit that will not come")
	}
}
