package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/coordinator"
)

// Failing checkpoint or ledger writes are the first thing status shows.
func TestStatusShowsProblemsFirst(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		st   coordinator.Status
		want []string // the lines after the first, in order
	}{
		{name: "healthy", st: coordinator.Status{LedgerOK: true, DigestsAgree: true}, want: []string{"epoch "}},
		{name: "checkpoint and ledger failing", st: coordinator.Status{LedgerOK: true, DigestsAgree: true, LastCheckpointStep: 30, LastCheckpointAgeSeconds: 9, LedgerLinesLost: 2,
			LastCheckpointError: &coordinator.Problem{Error: "no space left on device", Step: 40, Since: since, Time: since, Failures: 2},
			LedgerError:         &coordinator.Problem{Error: "input/output error", Step: 41, Since: since, Time: since, Failures: 1}},
			want: []string{
				"DEGRADED: checkpoint writes fail: the checkpoint at step 40 was not written (no space left on device); the checkpoint at step 30 stands",
				"DEGRADED: ledger writes fail: the line of step 41 is not on disk (input/output error)",
				"LEDGER INCOMPLETE: 2 lines were lost",
				"epoch "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printStatus(&b, "127.0.0.1:7000", &tc.st)
			lines := strings.Split(b.String(), "\n")
			for i, w := range tc.want {
				if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], w) {
					t.Fatalf("line %d is not %q...; status printed:\n%s", i+2, w, b.String())
				}
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		name string
		st   coordinator.Status
		want string
	}{
		{"no step count", coordinator.Status{Phase: "idle"}, "progress: unknown"},
		{"no ETA yet", coordinator.Status{Phase: "running", Step: 0, StepsTotal: 300},
			"progress [------------------------------]   0.0%  step 0/300  ETA unknown"},
		{"running", coordinator.Status{Phase: "running", Step: 100, StepsTotal: 300, ETASeconds: 3723, SecondsPerStep: 18.6},
			"progress [##########--------------------]  33.3%  step 100/300  ETA 1h02m (18.60 s a step)"},
		{"holding", coordinator.Status{Phase: "holding", Step: 150, StepsTotal: 300, ETASeconds: 245, SecondsPerStep: 1.6},
			"progress [###############---------------]  50.0%  step 150/300  ETA 4m05s (1.60 s a step) once training goes on: holding now"},
		{"scoring the last epoch", coordinator.Status{Phase: "running", Step: 300, StepsTotal: 300, ETASeconds: 12, SecondsPerStep: 0.5},
			"progress [##############################] 100.0%  step 300/300  ETA 12s (0.50 s a step)"},
		{"finished", coordinator.Status{Phase: "finished", Step: 300, StepsTotal: 300}, "progress [##############################] 100.0%  step 300/300  done"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := progressLine(&tc.st); !strings.HasPrefix(got, tc.want) {
				t.Errorf("progress line\n%q, want\n%q", got, tc.want)
			}
		})
	}
}

// --watch redraws in place only on a terminal; elsewhere it prints a new
// block (or a JSON line) per refresh. An error is shown and the watch goes
// on; without --watch it ends the command.
func TestStatusWatch(t *testing.T) {
	st := &coordinator.Status{Phase: "running", Step: 7, StepsTotal: 70, LedgerOK: true, DigestsAgree: true}
	down := errors.New("nothing listens there: try again")
	// run watches a coordinator that answers st, then down, then st, and
	// is interrupted (Ctrl-C) during the third fetch.
	run := func(v statusView) (out, errOut string, err error) {
		var o, e bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		n := 0
		err = v.show(ctx, &o, &e, func(context.Context) (*coordinator.Status, error) {
			switch n++; n {
			case 2:
				return nil, down
			case 3:
				cancel()
			}
			return st, nil
		})
		return o.String(), e.String(), err
	}

	out, errOut, err := run(statusView{addr: "a:1", watch: true, terminal: true, every: time.Millisecond})
	if err != nil || strings.Count(out, clearScreen) != 2 || !strings.HasPrefix(out, clearScreen) || strings.Contains(out, "--- ") {
		t.Errorf("on a terminal (err %v): want two redraws in place, the first at the top; got %q", err, out)
	}
	if !strings.Contains(out, "step 7/70") || !strings.Contains(out, down.Error()) || errOut != "" {
		t.Errorf("on a terminal: want the status and the error drawn in place; got %q, stderr %q", out, errOut)
	}

	out, errOut, err = run(statusView{addr: "a:1", watch: true, every: time.Millisecond})
	if err != nil || strings.Contains(out, "\033") || strings.Count(out, "--- ") != 1 || !strings.Contains(errOut, down.Error()) {
		t.Errorf("not on a terminal (err %v): want a block per status, no escapes, the error on stderr; got %q, stderr %q", err, out, errOut)
	}

	out, _, err = run(statusView{addr: "a:1", watch: true, json: true, terminal: true, every: time.Millisecond})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 1 || strings.Contains(out, "\033") {
		t.Fatalf("--json --watch (err %v): want one JSON line per status, no escapes; got %q", err, out)
	}
	var back coordinator.Status
	if err := json.Unmarshal([]byte(lines[0]), &back); err != nil || back.Step != 7 {
		t.Errorf("--json line %q: %v", lines[0], err)
	}

	v := statusView{addr: "a:1", every: time.Millisecond}
	if _, _, err := run(v); err != nil {
		t.Errorf("once: %v", err)
	}
	var o, e bytes.Buffer
	if err := v.show(context.Background(), &o, &e, func(context.Context) (*coordinator.Status, error) { return nil, down }); !errors.Is(err, down) {
		t.Errorf("once, failing: %v, want the fetch's error", err)
	}
}
