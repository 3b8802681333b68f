package clustertest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// The README's table of metrics is generated from the registries, so that
// it cannot drift from them: this test fails when they differ, and with
// NICE_UPDATE_README=1 rewrites the table.
const (
	tableBegin = "<!-- metrics table: generated from the registries by internal/clustertest/readme_metrics_test.go (NICE_UPDATE_README=1 go test ./internal/clustertest -run TestREADMEMetricsTable) -->"
	tableEnd   = "<!-- end of metrics table -->"
)

func TestREADMEMetricsTable(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", StateDir: t.TempDir(), Machine: coordinator.DefaultMachine(),
		Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	// Never served: closed by a Serve whose context has ended.
	t.Cleanup(func() {
		ctx, cancel := contextDone()
		cancel()
		srv.Serve(ctx)
	})
	wc := worker.DefaultConfig()
	wc.ID, wc.Logger = "w", log
	w, err := worker.New(wc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := contextDone()
		cancel()
		w.Run(ctx)
	})

	var rows []string
	for _, g := range []struct {
		who string
		fs  []*dto.MetricFamily
	}{{"coordinator", gather(t, srv.Gatherer().Gather)}, {"worker", gather(t, w.Gatherer().Gather)}} {
		var std int
		for _, f := range g.fs {
			name := f.GetName()
			switch {
			case strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_"):
				std++
				continue
			case !strings.HasPrefix(name, "nice_"+g.who+"_"):
				t.Errorf("%s metric %s: want the prefix nice_%s_", g.who, name, g.who)
			}
			var labels []string
			if len(f.Metric) > 0 {
				for _, l := range f.Metric[0].Label {
					labels = append(labels, "`"+l.GetName()+"`")
				}
			}
			rows = append(rows, "| `"+name+"` | "+strings.ToLower(f.GetType().String())+" | "+strings.Join(labels, ", ")+" | "+
				strings.ReplaceAll(f.GetHelp(), "|", `\|`)+" |")
		}
		if std == 0 {
			t.Errorf("%s: no go_* or process_* metrics: the Go and process collectors are missing", g.who)
		}
	}
	sort.Strings(rows)
	table := "| metric | type | labels | meaning |\n|---|---|---|---|\n" + strings.Join(rows, "\n") + "\n"

	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(readme, []byte(tableBegin))
	j := bytes.Index(readme, []byte(tableEnd))
	if i < 0 || j < i {
		t.Fatalf("README.md has no metrics table between the lines\n%s\nand\n%s", tableBegin, tableEnd)
	}
	have := string(readme[i+len(tableBegin)+1 : j])
	if have == table {
		return
	}
	if os.Getenv("NICE_UPDATE_README") == "1" {
		out := append(append(append([]byte{}, readme[:i+len(tableBegin)+1]...), table...), readme[j:]...)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("README.md: metrics table rewritten (%d metrics)", len(rows))
		return
	}
	t.Errorf("the README's metrics table differs from the registries; rewrite it with\n"+
		"  NICE_UPDATE_README=1 go test ./internal/clustertest -run TestREADMEMetricsTable\nwant:\n%s\nhave:\n%s", table, have)
}

func gather(t *testing.T, g func() ([]*dto.MetricFamily, error)) []*dto.MetricFamily {
	t.Helper()
	fs, err := g()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// contextDone returns a context to be cancelled at once: Serve and Run
// given it stop everything New started.
func contextDone() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
