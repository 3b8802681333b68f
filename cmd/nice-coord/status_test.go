package main

import (
	"bytes"
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
