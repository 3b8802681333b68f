package clustertest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

// BenchmarkWorkerKillRecovery SIGKILLs a random worker of three at a random
// moment, five times, and reports the median and worst time from the kill to
// the next committed step and to the new generation (failure detection).
// Run with -benchtime 1x.
func BenchmarkWorkerKillRecovery(b *testing.B) {
	if _, err := mnist.FindDir(""); err != nil {
		b.Skip("needs MNIST")
	}
	for _, model := range []struct {
		name string
		args []string
	}{
		{"small-model", tinyArgs},
		{"full-model", nil},
	} {
		b.Run(model.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				killRecovery(b, append(append([]string{}, model.args...), "--checkpoint-every", "50"))
			}
		})
	}
}

func killRecovery(b *testing.B, args []string) {
	c := New(b, args...)
	c.StartCoordinator()
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		c.StartWorker(id)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var toCommit, toDetect []float64
	for k := 0; k < 5; k++ {
		before := c.WaitStatus("3 workers training", 5*time.Minute, func(s *coordinator.Status) bool {
			return s.Phase == "running" && len(s.Ring) == 3 && s.CommittedSteps > 3
		})
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		victim := ids[rng.IntN(len(ids))]
		killed := time.Now()
		c.Workers[victim].Kill()
		var detected time.Duration
		c.WaitStatus("a commit after the kill", 5*time.Minute, func(s *coordinator.Status) bool {
			if detected == 0 && s.Generation > before.Generation {
				detected = time.Since(killed)
			}
			return len(s.Ring) == 2 && s.Generation > before.Generation && s.Step > before.Step && s.Phase == "running"
		})
		toCommit = append(toCommit, time.Since(killed).Seconds()*1000)
		toDetect = append(toDetect, detected.Seconds()*1000)
		c.StartWorker(victim)
	}
	slices.Sort(toCommit)
	slices.Sort(toDetect)
	b.ReportMetric(toCommit[2], "median-kill-to-commit-ms")
	b.ReportMetric(toCommit[4], "max-kill-to-commit-ms")
	b.ReportMetric(toDetect[2], "median-detect-ms")
	b.Logf("kill to next commit (ms): %.0f; kill to new generation (ms): %.0f", toCommit, toDetect)
}

// BenchmarkThroughput trains the full-size model at batch 256 with 1, 2 and 4
// worker processes sharing this machine's cores (as `nice-coord up` does:
// each worker gets cores/N threads), with no checkpoint until the end, and
// reports samples/s over the steps after warm-up. For N = 1 it also times the
// single-process training step, which gives the protocol's per-step overhead.
// Run with -benchtime 1x.
func BenchmarkThroughput(b *testing.B) {
	trainSet, testSet := loadForBench(b)
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				l, st := fullSizeRun(b, n, 16, 0)
				steps := stepTimes(l, 4)
				b.ReportMetric(256/mean(steps), "samples/s")
				b.ReportMetric(mean(steps)*1000, "ms/step")
				var compute, reduce []float64
				for _, e := range l[4:] {
					compute = append(compute, e.Compute)
					reduce = append(reduce, e.Allreduce)
				}
				b.ReportMetric(mean(compute)*1000, "ms/step-gradient")
				b.ReportMetric(mean(reduce)*1000, "ms/step-allreduce")
				if st != nil && n > 1 {
					b.ReportMetric(st.BusBW, "busbw-GBps")
				}
				if n == 1 {
					b.ReportMetric(singleProcessStep(b, trainSet, testSet)*1000, "ms/step-single-process")
				}
			}
		})
	}
}

// BenchmarkCheckpointCost trains the full-size model with one worker and a
// checkpoint every 6 steps, and reports the checkpoint's parts (the worker's
// snapshot is taken inside a step; the coordinator fetches and writes it off
// the training path) and the step times with and without one in flight.
// Run with -benchtime 1x.
func BenchmarkCheckpointCost(b *testing.B) {
	loadForBench(b)
	for i := 0; i < b.N; i++ {
		l, st := fullSizeRun(b, 1, 24, 6)
		var snap, other []float64
		for j := 4; j < len(l); j++ {
			d := float64(l[j].UnixNano-l[j-1].UnixNano) / 1e9
			// The step after a snapshot commit carries the copy, and the next
			// two run beside the coordinator's fetch and write.
			if l[j-1].Snapshot || (j >= 2 && l[j-2].Snapshot) || (j >= 3 && l[j-3].Snapshot) {
				snap = append(snap, d)
			} else {
				other = append(other, d)
			}
		}
		b.ReportMetric(mean(snap)*1000, "ms/step-during-checkpoint")
		b.ReportMetric(mean(other)*1000, "ms/step-other")
		if st != nil {
			b.ReportMetric(st.LastSnapshotFetchSeconds*1000, "ms-snapshot-fetch")
			b.ReportMetric(st.LastCheckpointWriteSeconds*1000, "ms-checkpoint-write")
			b.ReportMetric(float64(st.LastCheckpointBytes)/1e6, "MB-checkpoint")
		}
	}
}

func loadForBench(b *testing.B) (*mnist.Set, *mnist.Set) {
	dir, err := mnist.FindDir("")
	if err != nil {
		b.Skip("needs MNIST")
	}
	tr, te, err := mnist.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	return tr, te
}

// fullSizeRun trains the default model with n workers to steps and returns
// the ledger and the final status.
func fullSizeRun(b *testing.B, n, steps, ckptEvery int) ([]LedgerEntry, *coordinator.Status) {
	c := New(b, "--max-steps", fmt.Sprint(steps), "--checkpoint-every", fmt.Sprint(ckptEvery))
	c.Threads = max(1, 2/n)
	c.StartCoordinator()
	for w := 1; w <= n; w++ {
		c.StartWorker(fmt.Sprintf("w%d", w))
	}
	c.Held(int64(steps), 10*time.Minute)
	st, _ := c.Status()
	return c.Ledger(), st
}

// stepTimes are the gaps between consecutive commits from commit from on.
func stepTimes(l []LedgerEntry, from int) []float64 {
	var out []float64
	for j := from; j < len(l); j++ {
		out = append(out, float64(l[j].UnixNano-l[j-1].UnixNano)/1e9)
	}
	return out
}

func singleProcessStep(b *testing.B, trainSet, testSet *mnist.Set) float64 {
	cfg := train.DefaultConfig()
	tr, err := train.New(cfg, train.SplitData(cfg, trainSet, testSet))
	if err != nil {
		b.Fatal(err)
	}
	for w := 0; w < 3; w++ {
		tr.Step()
	}
	t0 := time.Now()
	const k = 10
	for w := 0; w < k; w++ {
		tr.Step()
	}
	return time.Since(t0).Seconds() / k
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
