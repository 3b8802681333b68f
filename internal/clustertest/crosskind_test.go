package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/replay"
	"github.com/nice-flow/nice/train"
)

// A run trained alone is continued by a cluster, and the cluster's run
// continued alone again, on the same trajectory bit for bit: k steps in
// this process saved as state.nice; `serve --resume-from state.nice` with
// one worker to step k+m; the stopped coordinator's state folder continued
// by `train --resume-from` to step k+m+j; each equals the uninterrupted
// single-process run at that step. (One worker: two or more sum the
// gradient in another float order, equal only within rounding.)
func TestContinuedAcrossKindsEqualsUninterrupted(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	// The processes multiply with one BLAS thread; OpenBLAS's sums depend
	// on its thread count, so the reference uses one too.
	prev := flow.BLASThreads()
	flow.SetBLASThreads(1)
	t.Cleanup(func() { flow.SetBLASThreads(prev) })
	const k, m, j = 3, 4, 3
	file := filepath.Join(t.TempDir(), "state.nice")
	if err := reference(t, trainSet, testSet, k).SaveFile(file); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 1, "--max-steps", fmt.Sprint(k+m), "--checkpoint-every", "0", "--resume-from", file)
	c.Coord.WaitLine(t, "resuming from checkpoint", 10*time.Second)
	got := c.Held(k+m, 2*time.Minute)
	if err := replay.SameFloats(got, reference(t, trainSet, testSet, k+m)); err != nil {
		t.Fatalf("the cluster continuing a single-process state.nice left the trajectory: %v", err)
	}
	for _, w := range c.Workers {
		w.Kill()
	}
	if err := c.Coord.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}

	out := t.TempDir()
	cmd := exec.Command(filepath.Join(c.Bin, "nice-coord"), "train", "--out", out, "--resume-from", filepath.Join(c.Dir, "state"),
		"--max-steps", fmt.Sprint(j), "--samples", "0", "--threads", "1")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "OPENBLAS_NUM_THREADS=1")
	outText, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("train --resume-from the cluster's state folder: %v\n%s", err, outText)
	}
	t.Logf("train --resume-from:\n%s", outText)
	alone, err := train.LoadFile(filepath.Join(out, "state.nice"))
	if err != nil {
		t.Fatal(err)
	}
	if err := replay.SameFloats(alone, reference(t, trainSet, testSet, k+m+j)); err != nil {
		t.Fatalf("train continuing the cluster's checkpoint left the trajectory: %v", err)
	}
}
