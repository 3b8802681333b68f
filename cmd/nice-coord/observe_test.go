package main

import (
	"encoding/json"
	"fmt"
	"github.com/nice-flow/nice/internal/testwait"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/clustertest"
	"github.com/nice-flow/nice/mnist"
)

// The binaries as a person runs them: serve with --log-format json and a
// worker with NICE_LOG_FORMAT=json write nothing but JSON objects, one a
// line; probe answers for /readyz and /healthz of both once training holds
// as asked.
func TestJSONLogsAndProbe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	bin := clustertest.Binaries(t)
	dir := t.TempDir()
	t.Setenv("NICE_LOG_FORMAT", "json") // the worker's way; serve gets the flag too
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t))
	coord := clustertest.Start(t, "coordinator", filepath.Join(bin, "nice-coord"), filepath.Join(dir, "coord.log"), 1,
		"serve", "--log-format", "json", "--listen", grpcAddr, "--http", httpAddr, "--gossip", "", "--state-dir", filepath.Join(dir, "state"),
		"--couplings", "2", "--hidden", "8", "--layers", "1", "--batch", "256", "--samples", "0", "--settle", "100ms", "--max-steps", "2")
	coord.WaitLine(t, `"msg":"coordinator ready"`, time.Minute)
	w := clustertest.Start(t, "worker", filepath.Join(bin, "nice-worker"), filepath.Join(dir, "worker.log"), 1,
		"--id", "w1", "--coordinator", grpcAddr, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--threads", "1")
	started := w.WaitLine(t, `"msg":"worker started"`, time.Minute)
	var rec struct{ HTTP string }
	if err := json.Unmarshal([]byte(started), &rec); err != nil || rec.HTTP == "" {
		t.Fatalf("worker started line %q: %v (want its http address)", started, err)
	}

	probe := func(bin, url string) (string, error) {
		out, err := exec.Command(bin, "probe", "--url", url).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// Wait (bounded) until the coordinator holds at step 2: /readyz then
	// says so.
	if err := testwait.Poll(3*time.Minute, "nice-coord probe of /readyz to say ready, holding at step 2", func() error {
		out, err := probe(filepath.Join(bin, "nice-coord"), "http://"+httpAddr+"/readyz")
		if err == nil && strings.HasPrefix(out, "ready: holding at step 2 as asked") {
			return nil
		}
		return fmt.Errorf("%v %q", err, out)
	}); err != nil {
		t.Fatalf("%v\ncoordinator:\n%s", err, coord.Output())
	}
	if out, err := probe(filepath.Join(bin, "nice-worker"), "http://"+rec.HTTP+"/readyz"); err != nil || !strings.HasPrefix(out, "ready: ") {
		t.Errorf("nice-worker probe of /readyz: %v %q", err, out)
	}
	if out, err := probe(filepath.Join(bin, "nice-worker"), "http://"+rec.HTTP+"/healthz"); err != nil || out != "ok" {
		t.Errorf("nice-worker probe of /healthz: %v %q", err, out)
	}
	// A probe of something that does not answer fails, saying so.
	if out, err := probe(filepath.Join(bin, "nice-coord"), fmt.Sprintf("http://127.0.0.1:%d/readyz", clustertest.FreePort(t))); err == nil ||
		!strings.Contains(out, "nothing answers at") {
		t.Errorf("probe of a closed port: %v %q; want a failure saying nothing answers", err, out)
	}

	if err := w.Stop(time.Minute); err != nil {
		t.Error(err)
	}
	if err := coord.Stop(time.Minute); err != nil {
		t.Error(err)
	}
	for _, p := range []*clustertest.Proc{coord, w} {
		lines := strings.Split(p.Output(), "\n")
		for i, l := range lines {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil || m["msg"] == nil || m["level"] == nil || m["time"] == nil {
				t.Errorf("%s line %d is not a JSON log record (%v): %s", p.Name, i+1, err, l)
			}
		}
		t.Logf("%s: %d JSON lines", p.Name, len(lines))
	}
}
