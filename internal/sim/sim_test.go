package sim

import (
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"
)

var (
	seeds = flag.Int("sim.seeds", 0, "seeded schedules to run (default: 2000, or 300 with -short under the race detector)")
	first = flag.Uint64("sim.first", 1, "the first seed")
	seed  = flag.Uint64("sim.seed", 0, "replay this one seed and print its trace")
)

// Thousands of seeded schedules of faults against the coordinator's and
// the workers' machines; after every event the invariants of the package
// documentation hold, and every run finishes with the single-process
// result.
func TestSimulation(t *testing.T) {
	if *seed != 0 {
		r := Run(Options{Seed: *seed, Trace: 400})
		t.Logf("seed %d: %d workers, faults %v, %d events, %v simulated, %d commits, %d redone",
			r.Seed, r.Workers, r.Faults, r.Events, r.SimTime, r.Committed, r.Redone)
		report(t, r)
		return
	}
	n := *seeds
	if n == 0 {
		n = 2000
		if raceEnabled {
			n = 300
		}
	}
	t0 := time.Now()
	var events, commits int
	var redone int64
	failed := 0
	for sd := *first; sd < *first+uint64(n); sd++ {
		r := Run(Options{Seed: sd})
		events += r.Events
		commits += r.Committed
		redone += r.Redone
		if len(r.Violations) > 0 {
			failed++
			if failed <= 3 {
				report(t, r)
			}
		}
	}
	el := time.Since(t0)
	t.Logf("%d seeded schedules in %v (%.0f/s): %d events, %d commits, %d steps redone; %d failed",
		n, el.Round(time.Millisecond), float64(n)/el.Seconds(), events, commits, redone, failed)
	if failed > 0 {
		t.Errorf("%d of %d schedules broke an invariant (replay one with -sim.seed N)", failed, n)
	}
}

func report(t *testing.T, r Result) {
	t.Helper()
	if len(r.Violations) == 0 {
		return
	}
	t.Errorf("seed %d (%d workers; faults: %s):\n  %s\nlast events:\n  %s\nreplay: go test ./internal/sim -run TestSimulation -sim.seed %d",
		r.Seed, r.Workers, strings.Join(r.Faults, "; "), strings.Join(r.Violations, "\n  "), strings.Join(r.Trace, "\n  "), r.Seed)
}

// Every seed is a reproducible run: the same seed gives the same events.
func TestSimulationIsDeterministic(t *testing.T) {
	for sd := uint64(1); sd <= 20; sd++ {
		a, b := Run(Options{Seed: sd}), Run(Options{Seed: sd})
		if fmt.Sprint(a.Events, a.Faults, a.Committed, a.SimTime) != fmt.Sprint(b.Events, b.Faults, b.Committed, b.SimTime) {
			t.Fatalf("seed %d ran differently twice: %d/%d events, %v/%v", sd, a.Events, b.Events, a.SimTime, b.SimTime)
		}
	}
}
