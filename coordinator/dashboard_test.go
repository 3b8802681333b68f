package coordinator

import (
	"bufio"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/plot"
	"github.com/nice-flow/nice/train"
)

// dashboardServer serves a dashboard of a server that never ran (its
// status is the zero one) over httptest.
func dashboardServer(t *testing.T) (*dashboard, *httptest.Server) {
	t.Helper()
	// Every stream and the grid's goroutine end with the server.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.status.Phase = "running"
	d := newDashboard(s)
	mux := http.NewServeMux()
	d.routes(mux)
	hs := httptest.NewUnstartedServer(mux)
	// As the coordinator's: a write timeout the event stream must outlive.
	hs.Config.WriteTimeout = 2 * time.Second
	hs.Config.RegisterOnShutdown(d.close)
	hs.Start()
	t.Cleanup(func() {
		d.close()
		hs.Close()
		s.wg.Wait()
	})
	return d, hs
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestDashboardHistoryJSON(t *testing.T) {
	d, hs := dashboardServer(t)
	now := time.Unix(1_800_000_000, 0)
	d.hist.AddStep(now, 1, 256, -256*1000, 0, []MemberTimes{{Worker: "a", Compute: 0.5, Allreduce: 0.25}})
	d.noteLogs(now, []string{"generation 1 (workers joined): 1 workers [a], from step 0"})
	d.hist.AddScore(now, 1, "epoch 1 scored")
	resp, body := get(t, hs.URL+"/api/history")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/history: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var v struct {
		Version uint64 `json:"version"`
		Points  []struct {
			Step int64   `json:"step"`
			T    int64   `json:"t"`
			NLL  float64 `json:"nll"`
			Grad float64 `json:"grad"`
			AR   float64 `json:"ar"`
		} `json:"points"`
		EpochTimes map[string]int64 `json:"epoch_times"`
		Members    map[string]struct {
			Step    int64   `json:"step"`
			Seconds float64 `json:"seconds"`
		} `json:"members"`
		Checkpoints []any `json:"checkpoints"`
		Events      []struct {
			Kind, Text string
		} `json:"events"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET /api/history is not the documented JSON: %v\n%s", err, body)
	}
	if len(v.Points) != 1 || v.Points[0].Step != 1 || v.Points[0].NLL != 1000 || v.Points[0].T != now.UnixMilli() || v.Points[0].Grad != 0.5 || v.Points[0].AR != 0.25 {
		t.Errorf("points %+v, want step 1 with NLL 1000, 0.5 s gradient, 0.25 s all-reduce at %d", v.Points, now.UnixMilli())
	}
	if v.EpochTimes["1"] != now.UnixMilli() {
		t.Errorf("epoch_times %v, want epoch 1 at %d", v.EpochTimes, now.UnixMilli())
	}
	if m := v.Members["a"]; m.Step != 1 || m.Seconds != 0.75 {
		t.Errorf("members %+v, want a's step 1 of 0.75 s", v.Members)
	}
	if v.Checkpoints == nil || len(v.Events) != 2 || v.Events[0].Kind != EventGeneration || v.Events[1].Kind != EventScore {
		t.Errorf("checkpoints %v (want [], not null), events %+v (want the generation, then the score)", v.Checkpoints, v.Events)
	}
	// Encoded once per change: the same bytes until the history changes.
	b1, _ := d.historyJSON()
	b2, _ := d.historyJSON()
	if &b1[0] != &b2[0] {
		t.Error("the history was encoded again without a change")
	}
	d.hist.AddEvent(now, EventNote, "a change")
	if b3, _ := d.historyJSON(); &b3[0] == &b1[0] {
		t.Error("the history was not encoded again after a change")
	}
}

// The event stream sends the status as JSON, outlives the server's write
// timeout, is bounded in number, and ends when the server shuts down.
func TestDashboardEventStream(t *testing.T) {
	d, hs := dashboardServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func() (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/api/events", nil)
		return http.DefaultClient.Do(req)
	}
	resp, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET /api/events: %s %q", resp.Status, ct)
	}
	rd := bufio.NewReader(resp.Body)
	frame := func() Frame {
		t.Helper()
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("the stream ended: %v", err)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var f Frame
				if err := json.Unmarshal([]byte(data), &f); err != nil {
					t.Fatalf("a frame is not JSON: %v: %q", err, data)
				}
				return f
			}
		}
	}
	f := frame()
	if f.Status.Phase != "running" || f.SamplesStep != -1 {
		t.Fatalf("first frame %+v, want phase running and no sample grid", f)
	}
	// Frames keep coming past the server's 2 s write timeout.
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		d.hist.AddEvent(time.Now(), EventNote, time.Now().String()) // a change in every frame
		frame()
	}

	// Up to the bound, streams are served; beyond it, refused with 503.
	for d.streams.Load() < maxEventStreams {
		r, err := open()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		if r.StatusCode != 200 {
			t.Fatalf("stream %d refused: %s", d.streams.Load(), r.Status)
		}
	}
	r, err := open()
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream %d beyond the bound %d: %s, want 503", maxEventStreams+1, maxEventStreams, r.Status)
	}

	// The server's shutdown ends every stream.
	go hs.Config.Shutdown(ctx)
	if _, err := io.Copy(io.Discard, rd); err != nil && ctx.Err() != nil {
		t.Fatalf("the stream did not end with the server: %v", err)
	}
}

// The grid is drawn once per checkpoint and served from memory.
func TestDashboardSamples(t *testing.T) {
	d, hs := dashboardServer(t)
	resp, body := get(t, hs.URL+"/api/samples.png")
	if resp.StatusCode != 404 || !strings.Contains(string(body), "no sample grid yet") {
		t.Fatalf("before any checkpoint: %s %q, want 404 saying there is none yet", resp.Status, body)
	}
	c := train.PaperConfig()
	c.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	st, err := train.InitialState(c, train.Data{})
	if err != nil {
		t.Fatal(err)
	}
	st.Position.Step = 40
	d.gridMu.Lock()
	drawn := d.gridDrawn
	d.gridMu.Unlock()
	d.drawSamples(st)
	select {
	case <-drawn:
	case <-time.After(time.Minute):
		t.Fatal("the grid was not drawn within a minute")
	}
	resp, body = get(t, hs.URL+"/api/samples.png")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || resp.Header.Get("X-Nice-Step") != "40" {
		t.Fatalf("after the checkpoint at step 40: %s %q step %q", resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("X-Nice-Step"))
	}
	img, err := png.Decode(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	side := plot.Scale * (gridSide*(plot.TileSide+plot.Gap) + plot.Gap)
	if b := img.Bounds(); b.Dx() != side || b.Dy() != side {
		t.Fatalf("grid %dx%d, want %dx%d", b.Dx(), b.Dy(), side, side)
	}
	if f, _ := d.frameJSON(time.Now().Add(time.Hour)); !strings.Contains(string(f), `"samples_step":40`) {
		t.Fatalf("the frame does not name the grid's step: %s", f)
	}
}

// The page and its assets are served; nothing but GET is.
func TestDashboardPage(t *testing.T) {
	_, hs := dashboardServer(t)
	for path, want := range map[string]string{
		"/":                 `<script src="/assets/app.js">`,
		"/assets/app.js":    "new EventSource('/api/events')",
		"/assets/style.css": ".card",
	} {
		resp, body := get(t, hs.URL+path)
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, body without %q", path, resp.Status, want)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
	}
	for _, path := range []string{"/", "/api/history", "/api/events", "/api/samples.png"} {
		resp, err := http.Post(hs.URL+path, "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %s, want 405", path, resp.Status)
		}
	}
	if resp, _ := get(t, hs.URL+"/nothing-here"); resp.StatusCode != 404 {
		t.Errorf("GET /nothing-here: %s, want 404", resp.Status)
	}
}
