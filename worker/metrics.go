package worker

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nice-flow/nice/ring"
)

// The worker's Prometheus metrics, served at GET /metrics on its HTTP port
// (Config.HTTP). Each Worker has a registry of its own, so that several
// workers run in one test process. Durations are observed where the work
// happens; the position, generation and readiness are read at scrape time.

// durationBuckets span a tiny test model's step (milliseconds) to a stalled
// all-reduce or a long commit wait (minutes).
var durationBuckets = prometheus.ExponentialBuckets(0.001, 2, 18) // 1 ms .. 131 s

// observability is a worker's metrics and its readiness as last computed by
// the loop.
type observability struct {
	reg *prometheus.Registry

	computed         prometheus.Counter
	computeSeconds   prometheus.Histogram
	allreduceSeconds prometheus.Histogram
	commitWait       prometheus.Histogram
	applySeconds     prometheus.Histogram
	allreduceFails   prometheus.Counter
	ringSent         prometheus.Counter
	ringReceived     prometheus.Counter
	transfers        *prometheus.CounterVec
	transferBytes    *prometheus.CounterVec

	// reportedAt is when the last report was handed to the session (loop
	// goroutine only): its commit's arrival ends the commit wait.
	reportedAt time.Time

	mu    sync.Mutex
	ready readiness
}

// readiness is the worker's standing as the loop last saw it.
type readiness struct {
	ready      bool
	why        string
	attached   bool
	rank, size int
	generation uint64
}

func newObservability(w *Worker) *observability {
	o := &observability{reg: prometheus.NewRegistry(), ready: readiness{why: "starting", rank: -1}}
	hist := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: durationBuckets})
	}
	o.computed = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_worker_steps_computed_total",
		Help: "Steps whose gradient this worker computed and all-reduced (reported to the coordinator; a redone step counts again)."})
	o.computeSeconds = hist("nice_worker_compute_duration_seconds", "Time to compute the gradient of this worker's shard of a step.")
	o.allreduceSeconds = hist("nice_worker_allreduce_duration_seconds", "Time of a successful ring all-reduce of the gradient.")
	o.commitWait = hist("nice_worker_commit_wait_seconds",
		"Time from reporting a step's gradient digest to receiving its commit (waiting for the slowest member and the coordinator).")
	o.applySeconds = hist("nice_worker_apply_duration_seconds", "Time to apply a committed step's update (and keep a snapshot when asked).")
	o.allreduceFails = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_worker_allreduce_failures_total",
		Help: "All-reduces that failed (a neighbour lost, a timeout, a refused frame); the coordinator redoes the step."})
	o.ringSent = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_worker_ring_sent_bytes_total",
		Help: "Gradient bytes this worker sent to its right-hand ring neighbour (float32 payload, without framing)."})
	o.ringReceived = prometheus.NewCounter(prometheus.CounterOpts{Name: "nice_worker_ring_received_bytes_total",
		Help: "Gradient bytes this worker received from its left-hand ring neighbour (float32 payload, without framing)."})
	o.transfers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nice_worker_state_transfers_total",
		Help: "State transfers by direction (fetched: this worker loaded a state; served: it sent one to a peer or the coordinator) and result (ok, failed)."},
		[]string{"direction", "result"})
	o.transferBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nice_worker_state_transfer_bytes_total",
		Help: "Bytes of the state transfers that succeeded, by direction (fetched, served)."}, []string{"direction"})
	for _, d := range []string{"fetched", "served"} {
		o.transferBytes.WithLabelValues(d)
		for _, r := range []string{"ok", "failed"} {
			o.transfers.WithLabelValues(d, r)
		}
	}
	o.reg.MustRegister(o.computed, o.computeSeconds, o.allreduceSeconds, o.commitWait, o.applySeconds, o.allreduceFails,
		o.ringSent, o.ringReceived, o.transfers, o.transferBytes,
		&standingCollector{w: w},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return o
}

// Gatherer returns the worker's metrics registry (what GET /metrics serves).
func (w *Worker) Gatherer() prometheus.Gatherer { return w.obs.reg }

// Readiness says whether the worker is ready (GET /readyz) and why.
func (w *Worker) Readiness() (bool, string) {
	w.obs.mu.Lock()
	defer w.obs.mu.Unlock()
	return w.obs.ready.ready, w.obs.ready.why
}

func (w *Worker) metricsHandler() http.Handler {
	return promhttp.HandlerFor(w.obs.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{w.log}, MaxRequestsInFlight: 4})
}

// slogPrinter passes promhttp's errors to the worker's log.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("serving /metrics", "err", v) }

// transferDone counts one state transfer.
func (o *observability) transferDone(direction string, bytes int, err error) {
	if err != nil {
		o.transfers.WithLabelValues(direction, "failed").Inc()
		return
	}
	o.transfers.WithLabelValues(direction, "ok").Inc()
	o.transferBytes.WithLabelValues(direction).Add(float64(bytes))
}

var (
	descApplied    = prometheus.NewDesc("nice_worker_steps_applied_total", "Committed steps this worker applied.", nil, nil)
	descGeneration = prometheus.NewDesc("nice_worker_generation", "Generation of the worker's current plan (0: none).", nil, nil)
	descRank       = prometheus.NewDesc("nice_worker_rank", "The worker's rank in the current generation's ring (-1: not in a ring).", nil, nil)
	descRingSize   = prometheus.NewDesc("nice_worker_ring_members", "Members of the current generation's ring (0: not in a ring).", nil, nil)
	descStep       = prometheus.NewDesc("nice_worker_step", "Global step of the state the worker holds (the next step it computes).", nil, nil)
	descAttached   = prometheus.NewDesc("nice_worker_attached", "1 while the worker has a session with the coordinator.", nil, nil)
	descRingConns  = prometheus.NewDesc("nice_worker_ring_connections_total",
		"Connections this worker opened to ring neighbours with a local folder (--local-dir), by route: local (the peer's Unix socket) or tcp (no socket answered). Both stay 0 without a local folder.", []string{"route"}, nil)
	descReady = prometheus.NewDesc("nice_worker_ready", "1 when GET /readyz answers 200 (in the current generation, or attached and waiting for the next).", nil, nil)
)

// standingCollector reads the worker's counters and readiness at scrape
// time.
type standingCollector struct{ w *Worker }

// Describe implements prometheus.Collector.
func (c *standingCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descApplied, descGeneration, descRank, descRingSize, descStep, descAttached, descReady, descRingConns} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *standingCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.w.Stats()
	c.w.obs.mu.Lock()
	r := c.w.obs.ready
	c.w.obs.mu.Unlock()
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.CounterValue, float64(st.Applied))
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(r.generation))
	ch <- prometheus.MustNewConstMetric(descRank, prometheus.GaugeValue, float64(r.rank))
	ch <- prometheus.MustNewConstMetric(descRingSize, prometheus.GaugeValue, float64(r.size))
	ch <- prometheus.MustNewConstMetric(descStep, prometheus.GaugeValue, float64(st.Position.Step))
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, flag(r.attached))
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, flag(r.ready))
	local, tcp := c.w.transport.Routes()
	ch <- prometheus.MustNewConstMetric(descRingConns, prometheus.CounterValue, float64(local), "local")
	ch <- prometheus.MustNewConstMetric(descRingConns, prometheus.CounterValue, float64(tcp), "tcp")
}

// countingTransport counts the gradient bytes a ring member sends and
// receives, as the transport moves them.
type countingTransport struct {
	ring.RingTransport
	sent, received prometheus.Counter
}

func (t *countingTransport) Dial(ctx context.Context, id ring.StreamID) (ring.SendLink, error) {
	l, err := t.RingTransport.Dial(ctx, id)
	if err != nil {
		return nil, err
	}
	return &countingSend{SendLink: l, n: t.sent}, nil
}

func (t *countingTransport) Accept(ctx context.Context, id ring.StreamID) (ring.RecvLink, error) {
	l, err := t.RingTransport.Accept(ctx, id)
	if err != nil {
		return nil, err
	}
	return &countingRecv{RecvLink: l, n: t.received}, nil
}

type countingSend struct {
	ring.SendLink
	n prometheus.Counter
}

func (s *countingSend) Send(h *ring.FrameHeader, data []float32, deadline time.Time) error {
	err := s.SendLink.Send(h, data, deadline)
	if err == nil {
		s.n.Add(float64(4 * len(data)))
	}
	return err
}

type countingRecv struct {
	ring.RecvLink
	n prometheus.Counter
}

func (r *countingRecv) Recv(want *ring.FrameHeader, dst []float32, op ring.Apply, deadline time.Time) error {
	err := r.RecvLink.Recv(want, dst, op, deadline)
	if err == nil {
		r.n.Add(float64(4 * len(dst)))
	}
	return err
}

// loopStall is how long the worker's loop may go without turning before
// GET /healthz calls the worker stuck: it turns at least every 100 ms
// (its tick), whatever the work in flight.
const loopStall = 30 * time.Second

// lastTurn is shared by the loop (which stores) and /healthz (which loads).
type lastTurn struct{ unixNano atomic.Int64 }

func (l *lastTurn) mark(now time.Time) { l.unixNano.Store(now.UnixNano()) }

func (l *lastTurn) since(now time.Time) (time.Duration, bool) {
	n := l.unixNano.Load()
	if n == 0 {
		return 0, false
	}
	return now.Sub(time.Unix(0, n)), true
}
