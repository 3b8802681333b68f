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
	for i := 0; i < b.N; i++ {
		c := New(b, append(append([]string{}, tinyArgs...), "--checkpoint-every", "50")...)
		c.StartCoordinator()
		ids := []string{"w1", "w2", "w3"}
		for _, id := range ids {
			c.StartWorker(id)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		var toCommit, toDetect []float64
		for k := 0; k < 5; k++ {
			before := c.WaitStatus("3 workers training", 2*time.Minute, func(s *coordinator.Status) bool {
				return s.Phase == "running" && len(s.Ring) == 3 && s.CommittedSteps > 3
			})
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			victim := ids[rng.IntN(len(ids))]
			killed := time.Now()
			c.Workers[victim].Kill()
			var detected time.Duration
			st := c.WaitStatus("a commit after the kill", time.Minute, func(s *coordinator.Status) bool {
				if detected == 0 && s.Generation > before.Generation {
					detected = time.Since(killed)
				}
				return len(s.Ring) == 2 && s.Generation > before.Generation && s.CommittedSteps > 0 && s.Step > before.Step && s.Phase == "running"
			})
			_ = st
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
}

// BenchmarkThroughput trains the full-size model at batch 256 with 1, 2 and 4
// worker processes sharing this machine's cores (as `nice-coord up` does),
// and reports samples/s over the steps after warm-up, the step time, and how
// steps that follow a checkpoint snapshot compare. For N = 1 it also times
// the single-process training step, to give the protocol's overhead.
// Run with -benchtime 1x.
func BenchmarkThroughput(b *testing.B) {
	trainSet, testSet := func() (*mnist.Set, *mnist.Set) {
		dir, err := mnist.FindDir("")
		if err != nil {
			b.Skip("needs MNIST")
		}
		tr, te, err := mnist.Load(dir)
		if err != nil {
			b.Fatal(err)
		}
		return tr, te
	}()
	const steps = 24
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c := New(b, "--max-steps", fmt.Sprint(steps), "--checkpoint-every", "6")
				c.Threads = max(1, 2/n)
				c.StartCoordinator()
				for w := 1; w <= n; w++ {
					c.StartWorker(fmt.Sprintf("w%d", w))
				}
				c.Held(steps, 10*time.Minute)
				l := c.Ledger()
				// Steps 4.. are warm; a step's time is the gap between commits.
				var all, afterSnap, other []float64
				for j := 4; j < len(l); j++ {
					d := float64(l[j].UnixNano-l[j-1].UnixNano) / 1e9
					all = append(all, d)
					if l[j-1].Snapshot {
						afterSnap = append(afterSnap, d)
					} else {
						other = append(other, d)
					}
				}
				total := float64(l[len(l)-1].UnixNano-l[3].UnixNano) / 1e9
				sps := float64(256*(len(l)-4)) / total
				b.ReportMetric(sps, "samples/s")
				b.ReportMetric(mean(all)*1000, "ms/step")
				b.ReportMetric(mean(afterSnap)*1000, "ms/step-after-snapshot")
				b.ReportMetric(mean(other)*1000, "ms/step-other")
				st, _ := c.Status()
				if st != nil {
					b.ReportMetric(st.LastCheckpointWriteSeconds*1000, "ms-checkpoint-write")
					b.ReportMetric(st.LastSnapshotFetchSeconds*1000, "ms-snapshot-fetch")
					b.ReportMetric(st.BusBW, "busbw-GBps")
				}
				if n == 1 {
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
					single := time.Since(t0).Seconds() / k
					b.ReportMetric(single*1000, "ms/step-single-process")
				}
			}
		})
	}
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
