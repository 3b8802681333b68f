package coordinator

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	nicepb "github.com/nice-flow/nice/proto"
)

// Health has two questions, as Kubernetes asks them:
//
//   - Alive (GET /healthz): the process answers, and is not degraded. It is
//     degraded while checkpoint writes or the ledger fail (Status.Problems):
//     /healthz answers 503 naming the problems until a later write succeeds.
//     A failed checkpoint write is retried by the next commit; a held or
//     finished run retries on its own (MachineConfig.SaveRetry).
//   - Ready (GET /readyz): it does what it is for (Status.Readiness):
//     training (preparing or running a generation), or holding or finished
//     as it was asked to, and not degraded, so its newest checkpoint is
//     written. Idle (too few workers) or held on a step that is not finite,
//     it is not ready.
//
// The gRPC health service (service "" and nice.v1.Coordinator) says SERVING
// exactly when /readyz answers 200.

// serveHealthz answers GET /healthz: 200 "ok", or 503 with the problems.
func (s *Server) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	st := s.Status()
	problems := st.Problems()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) == 0 {
		io.WriteString(w, "ok\n")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, "degraded\n")
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
}

// serveReadyz answers GET /readyz: 200 "ready: " and what it does, or 503
// "not ready: " and why.
func (s *Server) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	st := s.Status()
	ready, why := st.Readiness()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if ready {
		fmt.Fprintf(w, "ready: %s\n", why)
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "not ready: %s\n", why)
}

// Readiness says whether the coordinator is ready (see GET /readyz) and
// why, in a sentence.
func (st *Status) Readiness() (bool, string) {
	if p := st.Problems(); len(p) > 0 {
		return false, "degraded: " + strings.Join(p, "; ")
	}
	switch Phase(st.Phase) {
	case Running, Preparing:
		return true, fmt.Sprintf("%s generation %d with %d workers, step %d", st.Phase, st.Generation, len(st.Ring), st.Step)
	case Holding:
		if st.NonFiniteSteps > 0 {
			return false, fmt.Sprintf("training holds at step %d because a gradient or log-likelihood was not finite; restart with a lower --lr or with --clip 1", st.Step)
		}
		return true, fmt.Sprintf("holding at step %d as asked, the checkpoint at step %d stored", st.Step, st.LastCheckpointStep)
	case Finished:
		return true, fmt.Sprintf("finished all %d epochs at step %d, the checkpoint at step %d stored", st.Epochs, st.Step, st.LastCheckpointStep)
	case Idle:
		return false, fmt.Sprintf("idle at step %d: waiting for enough workers (%d attached)", st.Step, len(st.Workers))
	}
	return false, fmt.Sprintf("phase %q", st.Phase)
}

// refreshHealth sets the gRPC health service to the readiness standing now
// (it changes only when the verdict does).
func (s *Server) refreshHealth() {
	if s.health == nil || s.obs == nil {
		return
	}
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	st := s.Status()
	ready, _ := st.Readiness()
	v := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		v = healthpb.HealthCheckResponse_SERVING
	}
	if s.obs.verdictSet && s.obs.verdict == v {
		return
	}
	s.obs.verdict, s.obs.verdictSet = v, true
	for _, service := range []string{"", nicepb.Coordinator_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(service, v)
	}
}

// noteCheckpointFailure records a failed checkpoint write and has the next
// commit take a new checkpoint (writer goroutine).
func (s *Server) noteCheckpointFailure(step uint64, err error) {
	s.mu.Lock()
	s.status.LastCheckpointError = s.status.LastCheckpointError.again(int64(step), err, time.Now())
	s.retryCheckpoint = true
	s.mu.Unlock()
	s.obs.ckptErrors.Inc()
	s.refreshHealth()
}

// retryFailedCheckpoint asks the machine for a checkpoint at the next commit
// when a write failed since it last looked (loop goroutine). A held or
// finished run has no next commit: the machine asks again on its own.
//
// Retries after the first are spaced by MachineConfig.SaveRetry, as the
// machine spaces its own: every snapshot makes each member copy its state on
// the training path, and a disk that stays full would otherwise have every
// other commit pay for one.
func (s *Server) retryFailedCheckpoint(now time.Time) {
	every := s.cfg.Machine.SaveRetry
	if every <= 0 {
		every = 5 * time.Second // the machine's default
	}
	s.mu.Lock()
	retry := s.retryCheckpoint && now.Sub(s.lastRetry) >= every
	if retry {
		s.retryCheckpoint = false
	}
	s.mu.Unlock()
	if !retry {
		return
	}
	if p := s.m.Phase(); p == Holding || p == Finished {
		return
	}
	s.lastRetry = now
	s.log.Info("a checkpoint write failed: the next commit takes a new checkpoint")
	s.m.RequestSnapshot()
}

// noteLedger records how appending the line of step went (loop goroutine).
func (s *Server) noteLedger(step int64, err error) {
	s.mu.Lock()
	prev := s.status.LedgerError
	var cur *Problem
	if err != nil {
		cur = prev.again(step, err, time.Now())
	}
	s.status.LedgerError = cur
	s.status.LedgerLinesLost = s.ledger.lost
	s.mu.Unlock()
	switch {
	case cur != nil && (cur.Failures == 1 || cur.Failures%100 == 0):
		// Not every failure: a full disk fails every commit.
		s.log.Error("ledger not written: its lines wait in memory, and health is degraded until the file takes them",
			"step", step, "failures", cur.Failures, "err", err)
	case cur == nil && prev != nil:
		s.log.Info("the ledger is written and synced again", "step", step, "failures", prev.Failures, "lines_lost", s.ledger.lost)
	}
	if (cur == nil) != (prev == nil) {
		s.refreshHealth()
	}
}

// finalCheckpointError says, once Serve has stopped everything, whether the
// state training reached is stored, and if not which checkpoint stands and
// why.
func (s *Server) finalCheckpointError(timedOut bool, wait time.Duration) error {
	st := s.Status()
	if st.LastCheckpointStep >= st.Step {
		return nil
	}
	stands := "no checkpoint stands"
	if !st.lastCheckpointTime.IsZero() {
		stands = fmt.Sprintf("the checkpoint at step %d stands", st.LastCheckpointStep)
	}
	var why string
	switch p := st.LastCheckpointError; {
	case p != nil:
		why = fmt.Sprintf("writing the checkpoint at step %d failed (failures: %d since %s): %s",
			p.Step, p.Failures, p.Since.UTC().Format(time.RFC3339), p.Error)
	case timedOut:
		why = fmt.Sprintf("no checkpoint of it was taken within %v (the log says why)", wait)
	default:
		why = "no checkpoint of it was taken: no worker held it when the coordinator stopped, or fetching it failed (the log says which)"
	}
	return fmt.Errorf("the state training reached, at step %d, is not stored, and %s: %s", st.Step, stands, why)
}
