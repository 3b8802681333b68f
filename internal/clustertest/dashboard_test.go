package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// TestDashboardInChromium starts a coordinator and two workers in this
// process, opens the dashboard in headless Chromium (Debian's chromium
// package), waits until the page shows both workers in the members table,
// drawn learning curves and step-time bands, and the sample grid of a
// checkpoint, and saves a screenshot: into the test's temporary folder, or
// to the path in NICE_DASHBOARD_SCREENSHOT.
func TestDashboardInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a small model on MNIST and runs a browser")
	}
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium)")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.CheckpointEvery = 5
	mc.StopAt = 2000 // bounded, far beyond what the test waits for
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", StateDir: t.TempDir(), Machine: mc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(ctx) }()
	for _, id := range []string{"worker-a", "worker-b"} {
		cfg := worker.DefaultConfig()
		cfg.ID, cfg.Coordinator = id, srv.Addr()
		w, err := worker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	url := "http://" + srv.HTTPAddr() + "/"
	t.Logf("dashboard at %s", url)
	profile := t.TempDir()

	// The page is ready when the members table lists both workers, the
	// curves and the step-time bands are drawn, and the grid is shown.
	checks := []struct {
		what string
		re   *regexp.Regexp
	}{
		{"worker-a in the members table", regexp.MustCompile(`<td class="mono">worker-a</td>`)},
		{"worker-b in the members table", regexp.MustCompile(`<td class="mono">worker-b</td>`)},
		{"the train NLL curve", regexp.MustCompile(`(?s)id="ch-nll"[^>]*>.*?<polyline points="[0-9.]+,[0-9.]+ [0-9.]+,[0-9.]+`)},
		{"the step-time bands", regexp.MustCompile(`(?s)id="ch-time"[^>]*>.*?<polygon points="[0-9.]+,`)},
		{"the throughput curve", regexp.MustCompile(`(?s)id="ch-sps"[^>]*>.*?<polyline points="[0-9.]+,[0-9.]+ [0-9.]+,`)},
		{"the sample grid", regexp.MustCompile(`<img id="samples"[^>]*src="/api/samples.png\?step=\d+"`)},
		{"a generation in the events", regexp.MustCompile(`<span class="kind generation">generation</span>`)},
		{"the polling", regexp.MustCompile(`id="live" class="pill ok"[^>]*>polling<`)},
	}
	var dom string
	var missing []string
	deadline := time.Now().Add(3 * time.Minute)
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for {
		// --dump-dom returns at the page's load event unless virtual time
		// runs, and virtual time stands still while a request is open, as
		// the event stream always is: the DOM is read with the page polling
		// (#poll). The stream itself is TestDashboardEventStream's.
		dom, err = runChromium(ctx, browser, profile, url+"#poll", "--dump-dom", "--virtual-time-budget=10000")
		missing = missing[:0]
		if err == nil {
			for _, c := range checks {
				if !c.re.MatchString(dom) {
					missing = append(missing, c.what)
				}
			}
			if len(missing) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard did not show %v within 3 min (chromium: %v); status %+v; its DOM:\n%s", missing, err, srv.Status(), dom)
		}
		<-poll.C
	}

	shot := os.Getenv("NICE_DASHBOARD_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "dashboard.png")
	} else if shot, err = filepath.Abs(shot); err != nil {
		t.Fatal(err)
	}
	// The screenshot is taken when --timeout ends, with the page live on
	// its event stream.
	if out, err := runChromium(ctx, browser, profile, url, "--screenshot="+shot, "--window-size=1400,1800", "--timeout=5000"); err != nil {
		t.Fatalf("screenshot: %v\n%s", err, out)
	}
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if r := img.Bounds(); r.Dx() != 1400 || r.Dy() != 1800 {
		t.Fatalf("the screenshot is %dx%d, want 1400x1800", r.Dx(), r.Dy())
	}
	t.Logf("screenshot of the dashboard at step %d: %s", srv.Status().Step, shot)
}

// runChromium runs headless Chromium on url with a fresh page and returns
// its output, or the page's console messages as an error.
func runChromium(ctx context.Context, browser, profile, url string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
		"--no-first-run", "--user-data-dir=" + profile, "--enable-logging=stderr", "--v=0"}, args...)
	cmd := exec.CommandContext(ctx, browser, append(all, url)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%v: %s", err, lastLines(errOut.String(), 5))
	}
	// The page's own errors, if any, say why it shows nothing.
	var console []string
	for _, l := range strings.Split(errOut.String(), "\n") {
		if strings.Contains(l, "CONSOLE") {
			console = append(console, l)
		}
	}
	if len(console) > 0 {
		return out.String(), fmt.Errorf("the page logged:\n%s", strings.Join(console, "\n"))
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
