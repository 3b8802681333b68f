package coordinator

import (
	"bytes"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/plot"
	"github.com/nice-flow/nice/train"
)

// The dashboard: a page at the HTTP port's / that draws the run from three
// read-only endpoints (see docs/design.md, "The dashboard"):
//
//	GET /api/history      the History as JSON, encoded once per change
//	GET /api/events       server-sent events: the status every second
//	GET /api/samples.png  the sample grid of the newest checkpoint
//
// Nothing a request sends is read but its path, and nothing a request does
// makes the coordinator compute: the grid is drawn once per checkpoint, the
// history encoded once per change, the status frame once per second for all
// the streams together.

//go:embed web
var webFiles embed.FS

// Dashboard bounds.
const (
	// maxEventStreams bounds the /api/events streams open at once; more
	// are refused with 503 (the page then polls /status).
	maxEventStreams = 16
	// streamLifetime ends a stream after this long; the browser reconnects
	// by itself, so a forgotten tab holds a connection only so long.
	streamLifetime = 30 * time.Minute
	// framePeriod is how often a stream sends the status.
	framePeriod = time.Second
	// heartbeatPeriod: a comment line when nothing changed for this long,
	// so proxies keep the stream and a dead client is noticed.
	heartbeatPeriod = 15 * time.Second
	// streamWriteTimeout bounds each write to a stream (the server's
	// WriteTimeout is replaced per write on these requests).
	streamWriteTimeout = 10 * time.Second
	// gridSide is the sample grid's side in digits.
	gridSide = 8
)

type dashboard struct {
	s    *Server
	hist *History

	quit     chan struct{} // closed when the HTTP server shuts down
	quitOnce sync.Once
	streams  atomic.Int64

	mu        sync.Mutex
	histJSON  []byte // /api/history at histVer
	histVer   uint64
	frame     []byte // the newest status frame
	frameTime time.Time

	gridMu    sync.Mutex
	grid      []byte // PNG
	gridStep  int64
	gridTime  time.Time
	gridErr   string
	drawing   bool
	nextDraw  *train.State
	gridDrawn chan struct{} // closed and replaced when a grid is drawn
}

func newDashboard(s *Server) *dashboard {
	return &dashboard{s: s, hist: NewHistory(DefaultHistoryLimits()), quit: make(chan struct{}), gridDrawn: make(chan struct{})}
}

// routes adds the dashboard's paths to mux.
func (d *dashboard) routes(mux *http.ServeMux) {
	web, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded folder is part of the binary
	}
	files := http.FileServerFS(web)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		d.headers(w)
		http.ServeFileFS(w, r, web, "index.html")
	})
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.headers(w)
		files.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /api/history", d.serveHistory)
	mux.HandleFunc("GET /api/events", d.serveEvents)
	mux.HandleFunc("GET /api/samples.png", d.serveSamples)
}

// close ends the event streams (the HTTP server's shutdown does not wait
// for streams that never go idle).
func (d *dashboard) close() { d.quitOnce.Do(func() { close(d.quit) }) }

func (d *dashboard) headers(w http.ResponseWriter) {
	h := w.Header()
	// Everything the page uses comes from this port.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

func (d *dashboard) serveHistory(w http.ResponseWriter, _ *http.Request) {
	b, err := d.historyJSON()
	if err != nil {
		http.Error(w, "history not encodable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	d.headers(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

// historyJSON is /api/history's body, encoded again only when the history
// changed.
func (d *dashboard) historyJSON() ([]byte, error) {
	v := d.hist.Version()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.histJSON != nil && d.histVer == v {
		return d.histJSON, nil
	}
	view := d.hist.View()
	b, err := json.Marshal(view)
	if err != nil {
		return nil, err
	}
	d.histJSON, d.histVer = append(b, '\n'), view.Version
	return d.histJSON, nil
}

// Frame is one server-sent event of /api/events: the status, and what the
// page must fetch again when it changed.
type Frame struct {
	Status         Status `json:"status"`
	HistoryVersion uint64 `json:"history_version"`
	// SamplesStep is the step of the sample grid /api/samples.png serves
	// (-1: none yet); SamplesNote says why there is none.
	SamplesStep int64  `json:"samples_step"`
	SamplesNote string `json:"samples_note,omitempty"`
	ServerMs    int64  `json:"server_ms"`
}

// frameJSON is the newest status frame, built at most once per framePeriod
// whatever the number of streams.
func (d *dashboard) frameJSON(now time.Time) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frame != nil && now.Sub(d.frameTime) < framePeriod/2 {
		return d.frame, nil
	}
	f := Frame{Status: d.s.Status(), HistoryVersion: d.hist.Version(), ServerMs: now.UnixMilli(), SamplesStep: -1}
	d.gridMu.Lock()
	if d.grid != nil {
		f.SamplesStep = d.gridStep
	}
	f.SamplesNote = d.gridErr
	d.gridMu.Unlock()
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	d.frame, d.frameTime = b, now
	return b, nil
}

func (d *dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	if d.streams.Add(1) > maxEventStreams {
		d.streams.Add(-1)
		w.Header().Set("Retry-After", "30")
		http.Error(w, fmt.Sprintf("too many event streams open (%d): poll /status instead", maxEventStreams), http.StatusServiceUnavailable)
		return
	}
	defer d.streams.Add(-1)
	rc := http.NewResponseController(w)
	d.headers(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	write := func(p []byte) bool {
		// The server's WriteTimeout would end the stream after its first
		// seconds: each write gets its own deadline instead.
		if err := rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)); err != nil {
			return false
		}
		if _, err := w.Write(p); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 3000\n\n")) {
		return
	}
	tick := time.NewTicker(framePeriod)
	defer tick.Stop()
	end := time.NewTimer(streamLifetime)
	defer end.Stop()
	var last []byte
	lastSent := time.Now()
	for first := true; ; first = false {
		if !first {
			select {
			case <-r.Context().Done():
				return
			case <-d.quit:
				return
			case <-end.C:
				return
			case <-tick.C:
			}
		}
		now := time.Now()
		b, err := d.frameJSON(now)
		if err != nil {
			d.s.log.Warn("dashboard frame not encodable", "err", err)
			return
		}
		switch {
		case !bytes.Equal(b, last):
			var msg bytes.Buffer
			msg.WriteString("event: status\ndata: ")
			msg.Write(b)
			msg.WriteString("\n\n")
			if !write(msg.Bytes()) {
				return
			}
			last, lastSent = b, now
		case now.Sub(lastSent) >= heartbeatPeriod:
			if !write([]byte(": heartbeat\n\n")) {
				return
			}
			lastSent = now
		}
	}
}

func (d *dashboard) serveSamples(w http.ResponseWriter, _ *http.Request) {
	d.gridMu.Lock()
	png, step, at, why := d.grid, d.gridStep, d.gridTime, d.gridErr
	d.gridMu.Unlock()
	d.headers(w)
	if png == nil {
		if why == "" {
			why = "the first is drawn from the first checkpoint this coordinator takes"
		}
		http.Error(w, "no sample grid yet: "+why, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Nice-Step", strconv.FormatInt(step, 10))
	w.Header().Set("Last-Modified", at.UTC().Format(http.TimeFormat))
	w.Write(png)
}

// drawSamples draws the sample grid of a checkpoint's state in the
// background (one at a time; a newer state replaces one still waiting).
// The caller is New or holds a count of s.wg (the snapshot goroutine
// does), so that the count never rises from zero while closeAll waits.
func (d *dashboard) drawSamples(st *train.State) {
	d.gridMu.Lock()
	defer d.gridMu.Unlock()
	if d.drawing {
		d.nextDraw = st
		return
	}
	d.drawing = true
	d.s.wg.Add(1)
	go func() {
		defer d.s.wg.Done()
		for st != nil {
			png, err := renderGrid(st)
			d.gridMu.Lock()
			if err != nil {
				d.gridErr = err.Error()
				d.s.log.Warn("dashboard sample grid not drawn", "step", st.Position.Step, "err", err)
			} else {
				d.grid, d.gridStep, d.gridTime, d.gridErr = png, st.Position.Step, time.Now(), ""
				close(d.gridDrawn)
				d.gridDrawn = make(chan struct{})
			}
			st, d.nextDraw = d.nextDraw, nil
			d.drawing = st != nil
			d.gridMu.Unlock()
		}
	}()
}

// renderGrid samples gridSide² digits from the state's model with the
// run's seed (the same noise at every checkpoint, so the grids show the
// same digits taking shape) and encodes them as a PNG.
func renderGrid(st *train.State) ([]byte, error) {
	if st.Config.Model.Dim != plot.TilePixels {
		return nil, fmt.Errorf("the model's %d dimensions are not a %dx%d image", st.Config.Model.Dim, plot.TileSide, plot.TileSide)
	}
	m, err := flow.New(st.Config.Model)
	if err != nil {
		return nil, err
	}
	if len(st.Params) != len(m.Params) {
		return nil, fmt.Errorf("the state holds %d parameters, its model %d", len(st.Params), len(m.Params))
	}
	copy(m.Params, st.Params)
	n := gridSide * gridSide
	xs := train.Samples(m, flow.NewWorkspace(m.Config, n), n, st.Config.Seed)
	var buf bytes.Buffer
	if err := plot.SampleGrid(&buf, xs, gridSide, gridSide); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Hooks: the server tells the history what happened.

// noteLogs files the machine's notes as events.
func (d *dashboard) noteLogs(now time.Time, logs []string) {
	for _, l := range logs {
		d.hist.AddEvent(now, eventKind(l), l)
	}
}

// eventKind classifies a machine note (see the Logs of Machine's methods).
func eventKind(l string) string {
	switch {
	case strings.HasPrefix(l, "refused "):
		return EventRefused
	case strings.HasPrefix(l, "generation "):
		return EventGeneration
	case strings.Contains(l, "redoing") || strings.Contains(l, "timed out"):
		return EventRedone
	case strings.HasPrefix(l, "worker ") && (strings.Contains(l, " attached") || strings.Contains(l, "re-attached")):
		return EventJoined
	case strings.HasPrefix(l, "worker ") && (strings.Contains(l, " left") || strings.Contains(l, "dropping it") ||
		strings.Contains(l, "broke") || strings.Contains(l, "leave")):
		return EventLost
	}
	return EventNote
}

func (d *dashboard) noteCommit(now time.Time, c *Commit, wall float64) {
	d.hist.AddStep(now, c.Position.Step+1, c.Batch, c.SumLL, wall, c.Times)
}

func (d *dashboard) noteScore(now time.Time, r train.EpochResult) {
	d.hist.AddScore(now, r.Epoch, fmt.Sprintf("epoch %d scored at step %d: test LL %.2f nats, %.4f bits/dim", r.Epoch, r.Step, r.TestLL, r.BitsPerDim))
}

func (d *dashboard) noteSaved(r checkpoint.Result) {
	now := time.Now()
	if r.Err != nil {
		d.hist.AddCheckpoint(now, CheckpointRecord{Step: int64(r.Meta.Step), UnixMs: now.UnixMilli(), Outcome: "failed", Error: r.Err.Error()},
			fmt.Sprintf("checkpoint at step %d not written: %v", r.Meta.Step, r.Err))
		return
	}
	d.hist.AddCheckpoint(now, CheckpointRecord{Step: int64(r.Meta.Step), UnixMs: r.Meta.Time.UnixMilli(), Bytes: r.Info.Size,
		Writes: r.Duration.Seconds(), Outcome: "stored", SHA256: hex.EncodeToString(r.Info.SHA256[:6])},
		fmt.Sprintf("checkpoint at step %d stored (%.1f MB in %.2f s)", r.Meta.Step, float64(r.Info.Size)/1e6, r.Duration.Seconds()))
}

func (d *dashboard) noteRefusedCheckpoint(step int64, err error) {
	now := time.Now()
	d.hist.AddCheckpoint(now, CheckpointRecord{Step: step, UnixMs: now.UnixMilli(), Outcome: "refused", Error: err.Error()},
		fmt.Sprintf("checkpoint at step %d refused: %v", step, err))
}

func (d *dashboard) noteResumed(info *checkpoint.Info) {
	d.hist.AddCheckpoint(time.Now(), CheckpointRecord{Step: int64(info.Step), UnixMs: info.Time.UnixMilli(), Bytes: info.Size,
		Outcome: "resumed", SHA256: hex.EncodeToString(info.SHA256[:6])},
		fmt.Sprintf("resumed from the checkpoint at step %d", info.Step))
}
