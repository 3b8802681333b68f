package coordinator

import (
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The coordinator's Prometheus metrics, served at GET /metrics on its HTTP
// port. Each Server has a registry of its own (several coordinators may
// run in one test process). What the status already counts is read from
// Status at scrape time by statusCollector, so the figures /metrics and
// /status show are one and the same; durations are observed into
// histograms where they happen (a commit, a checkpoint write, a snapshot
// fetch).

// durationBuckets span a tiny test model's step (milliseconds) to a stalled
// step or a slow checkpoint write on a busy disk (minutes).
var durationBuckets = prometheus.ExponentialBuckets(0.005, 2, 16) // 5 ms .. 164 s

// observability is the coordinator's metrics and the last verdict given to
// the gRPC health service.
type observability struct {
	reg *prometheus.Registry

	stepSeconds      prometheus.Histogram
	computeSeconds   prometheus.Histogram
	allreduceSeconds prometheus.Histogram
	samples          prometheus.Counter
	ckptSeconds      prometheus.Histogram
	ckptBytes        prometheus.Counter
	ckptErrors       prometheus.Counter
	fetchSeconds     prometheus.Histogram

	// verdict is what the gRPC health service says now (guarded by
	// Server.healthMu); verdictSet is false until it first says anything.
	verdict    healthpb.HealthCheckResponse_ServingStatus
	verdictSet bool
}

func newObservability(s *Server) *observability {
	o := &observability{reg: prometheus.NewRegistry()}
	hist := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: durationBuckets})
	}
	o.stepSeconds = hist("nice_coordinator_step_duration_seconds",
		"Wall time between consecutive commits (a step's whole cost, including waits; the first commit of this process is not observed).")
	o.computeSeconds = hist("nice_coordinator_step_compute_seconds",
		"Gradient time of the slowest ring member in each committed step, as the workers report it.")
	o.allreduceSeconds = hist("nice_coordinator_allreduce_duration_seconds",
		"All-reduce time of the slowest ring member in each committed step, as the workers report it.")
	o.samples = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_coordinator_samples_committed_total",
		Help: "Training samples in the steps committed by this coordinator process (rate() of it is the throughput)."})
	o.ckptSeconds = hist("nice_coordinator_checkpoint_write_duration_seconds",
		"Time to write one checkpoint to the store (successful writes).")
	o.ckptBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_coordinator_checkpoint_written_bytes_total",
		Help: "Bytes of the checkpoints written to the store."})
	o.ckptErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_coordinator_checkpoint_write_errors_total",
		Help: "Checkpoint writes that failed (a full disk, say); each makes the next commit take a new checkpoint."})
	o.fetchSeconds = hist("nice_coordinator_snapshot_fetch_duration_seconds",
		"Time to fetch a checkpoint's state from a worker, before it is written.")
	o.reg.MustRegister(o.stepSeconds, o.computeSeconds, o.allreduceSeconds, o.samples, o.ckptSeconds, o.ckptBytes, o.ckptErrors, o.fetchSeconds,
		&statusCollector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return o
}

// Gatherer returns the coordinator's metrics registry (what GET /metrics
// serves).
func (s *Server) Gatherer() prometheus.Gatherer { return s.obs.reg }

// metricsHandler serves GET /metrics.
func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.obs.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}, MaxRequestsInFlight: 4})
}

// slogPrinter passes promhttp's errors to the coordinator's log.
type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.log.Warn("serving /metrics", "err", v) }

// observeCommit records a committed step (loop goroutine).
func (o *observability) observeCommit(c *Commit, stepSeconds float64) {
	if stepSeconds > 0 {
		o.stepSeconds.Observe(stepSeconds)
	}
	if c.Compute > 0 {
		o.computeSeconds.Observe(c.Compute)
	}
	if c.Allreduce > 0 && len(c.Shards) > 1 {
		o.allreduceSeconds.Observe(c.Allreduce)
	}
	o.samples.Add(float64(c.Batch))
}

// statusCollector reads the status's counters at scrape time.
type statusCollector struct{ s *Server }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descCommitted = desc("nice_coordinator_steps_committed_total", "Steps committed by this coordinator process.")
	descRedone    = desc("nice_coordinator_steps_redone_total",
		"Steps whose first attempt was abandoned (a member lost, a digest mismatch, a timeout) and redone by a new generation.")
	descGenerations = desc("nice_coordinator_generations_total", "Generations started by this coordinator process.")
	descGeneration  = desc("nice_coordinator_generation", "The current generation.")
	descStep        = desc("nice_coordinator_step", "Steps committed since training began: the global step of the next commit.")
	descEpoch       = desc("nice_coordinator_epoch", "1-based epoch of the next step.")
	descPhase       = desc("nice_coordinator_phase", "1 for the phase the coordinator is in (idle, preparing, running, holding, finished), 0 for the others.", "phase")
	descWorkers     = desc("nice_coordinator_workers", "Attached workers by state (training, preparing, waiting, leaving).", "state")
	descRing        = desc("nice_coordinator_ring_members", "Workers in the current generation's ring.")
	descSessions    = desc("nice_coordinator_sessions_open", "Worker sessions open (bounded by --max-sessions).")
	descSPS         = desc("nice_coordinator_samples_per_second", "Training throughput, smoothed over the last commits.")
	descTrainNLL    = desc("nice_coordinator_train_nll_nats", "Mean negative log-likelihood per image of the last committed batch, in nats.")
	descTestLL      = desc("nice_coordinator_test_log_likelihood_nats", "Mean log-likelihood per image of the newest scored epoch on the test (or validation) set, in nats.")
	descBPD         = desc("nice_coordinator_test_bpd", "Bits per dimension (bpd) of the newest scored epoch: 8 - LL / (784 ln 2).")
	descEpochsDone  = desc("nice_coordinator_epochs_scored", "Epochs whose test log-likelihood is known.")
	descBusBW       = desc("nice_coordinator_allreduce_bus_bandwidth_bytes_per_second",
		"Bus bandwidth of the last step's all-reduce: bytes / time * 2(N-1)/N, with the slowest member's time.")
	descCkptStep      = desc("nice_coordinator_checkpoint_step", "Step of the newest checkpoint stored.")
	descCkptAge       = desc("nice_coordinator_checkpoint_age_seconds", "Age of the newest checkpoint stored (0 before the first).")
	descCkptSize      = desc("nice_coordinator_checkpoint_size_bytes", "Size of the newest checkpoint stored.")
	descCkptFailing   = desc("nice_coordinator_checkpoint_write_failures", "Failed checkpoint writes since the last one that succeeded (0: writes succeed).")
	descCkptRefused   = desc("nice_coordinator_checkpoints_refused_total", "Fetched states not stored because their digest was not the one the replicas agreed on.")
	descLedgerErrors  = desc("nice_coordinator_ledger_errors_total", "Commits whose shards did not partition the global batch (each redone).")
	descLedgerFailing = desc("nice_coordinator_ledger_write_failures", "Failed writes or syncs of the ledger file since the last success (0: it is written).")
	descLedgerLost    = desc("nice_coordinator_ledger_lines_lost_total", "Ledger lines given up because the file took nothing for too long.")
	descDigests       = desc("nice_coordinator_digest_mismatches_total", "Reports whose gradient or parameter digest disagreed with rank 0's (each step redone).")
	descNonFinite     = desc("nice_coordinator_non_finite_steps_total", "Steps whose reduced gradient or log-likelihood was not finite (the run holds there).")
	descRefused       = desc("nice_coordinator_refused_messages_total",
		"Workers' messages refused at the edge, by reason: stale, non_member, invalid, identity, hello.", "reason")
	descHealthy = desc("nice_coordinator_healthy", "1 when GET /healthz answers 200, 0 when the coordinator is degraded (checkpoint or ledger writes fail).")
	descReady   = desc("nice_coordinator_ready", "1 when GET /readyz answers 200: training, or holding or finished as asked, with its newest checkpoint written.")
)

var allDescs = []*prometheus.Desc{descCommitted, descRedone, descGenerations, descGeneration, descStep, descEpoch, descPhase,
	descWorkers, descRing, descSessions, descSPS, descTrainNLL, descTestLL, descBPD, descEpochsDone, descBusBW, descCkptStep, descCkptAge,
	descCkptSize, descCkptFailing, descCkptRefused, descLedgerErrors, descLedgerFailing, descLedgerLost, descDigests, descNonFinite,
	descRefused, descHealthy, descReady}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	counter(descCommitted, float64(st.CommittedSteps))
	counter(descRedone, float64(st.RedoneSteps))
	counter(descGenerations, float64(st.Generations))
	gauge(descGeneration, float64(st.Generation))
	gauge(descStep, float64(st.Step))
	gauge(descEpoch, float64(st.Epoch))
	for _, p := range []Phase{Idle, Preparing, Running, Holding, Finished} {
		gauge(descPhase, flag(st.Phase == string(p)), string(p))
	}
	byState := map[string]int{}
	for _, w := range st.Workers {
		byState[w.State]++
	}
	for _, s := range []MemberState{Training, Joining, Waiting, Leaving} {
		gauge(descWorkers, float64(byState[string(s)]), string(s))
		delete(byState, string(s))
	}
	for s, n := range byState { // a state added to the machine later
		gauge(descWorkers, float64(n), s)
	}
	gauge(descRing, float64(len(st.Ring)))
	gauge(descSessions, float64(c.s.openSessions.Load()))
	gauge(descSPS, st.SamplesPerSec)
	gauge(descTrainNLL, st.TrainNLL)
	gauge(descTestLL, st.TestLL)
	gauge(descBPD, st.BitsPerDim)
	gauge(descEpochsDone, float64(len(st.Scores)))
	gauge(descBusBW, st.BusBW*1e9)
	gauge(descCkptStep, float64(st.LastCheckpointStep))
	gauge(descCkptAge, st.LastCheckpointAgeSeconds)
	gauge(descCkptSize, float64(st.LastCheckpointBytes))
	var ckptFailing, ledgerFailing int
	if p := st.LastCheckpointError; p != nil {
		ckptFailing = p.Failures
	}
	if p := st.LedgerError; p != nil {
		ledgerFailing = p.Failures
	}
	gauge(descCkptFailing, float64(ckptFailing))
	counter(descCkptRefused, float64(st.CheckpointsRefused))
	counter(descLedgerErrors, float64(st.LedgerErrors))
	gauge(descLedgerFailing, float64(ledgerFailing))
	counter(descLedgerLost, float64(st.LedgerLinesLost))
	counter(descDigests, float64(st.DigestMismatches))
	counter(descNonFinite, float64(st.NonFiniteSteps))
	r := st.Refused
	for _, x := range []struct {
		reason string
		n      int64
	}{{"stale", r.Stale}, {"non_member", r.NonMember}, {"invalid", r.Invalid}, {"identity", r.Identity}, {"hello", r.Hello}} {
		counter(descRefused, float64(x.n), x.reason)
	}
	gauge(descHealthy, flag(len(st.Problems()) == 0))
	ready, _ := st.Readiness()
	gauge(descReady, flag(ready))
}

// machineLogLevel is the level of one of the machine's notes: refusals are
// warnings, routine notes (a state transfer ordered) are debug, the rest
// (generations, members joined and lost, redone steps) info.
func machineLogLevel(l string) slog.Level {
	switch {
	case strings.HasPrefix(l, "refused "):
		return slog.LevelWarn
	case strings.Contains(l, " fetches the state at step "):
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
