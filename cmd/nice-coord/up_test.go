package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/clustertest"
	"github.com/nice-flow/nice/mnist"
)

// `up` on a disk that takes no checkpoint: training holds at --max-steps,
// the checkpoint of that step is never stored, and up exits with an error
// saying so (which checkpoint stands, and why) instead of waiting for ever.
func TestUpFailsWhenNoCheckpointCanBeStored(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	bin := clustertest.Binaries(t)
	fullDisk := checkpoint.InjectorFunc(func(op checkpoint.Op) error {
		return fmt.Errorf("%v of step %d: %w", op.Kind, op.Step, syscall.ENOSPC)
	})
	store := checkpoint.WithFaults(checkpoint.NewMemory(checkpoint.MemoryOptions{}), checkpoint.OnKind(checkpoint.OpSave, fullDisk))
	args := []string{"--workers", "1", "--worker-bin", filepath.Join(bin, "nice-worker"), "--restart=false",
		"--state-dir", t.TempDir(), "--listen", fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t)), "--http", "", "--gossip", "",
		"--couplings", "2", "--hidden", "8", "--layers", "1", "--batch", "256", "--samples", "0", "--settle", "100ms",
		"--max-steps", "3", "--final-checkpoint-timeout", "2s", "--progress", "100ms"}
	done := make(chan error, 1)
	go func() { done <- upWith(context.Background(), args, store) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("up succeeded though no checkpoint could be stored")
		}
		t.Logf("up: %v", err)
		for _, want := range []string{"at step 3, is not stored", "no checkpoint stands", "no space left on device"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("up's error %q does not say %q", err, want)
			}
		}
	case <-time.After(5 * time.Minute):
		// Against a hang only: loading MNIST on a loaded machine is slow.
		t.Fatal("up still runs after 5 minutes")
	}
}

// up's folder for the ring's sockets: a usable one holds a socket for any
// loopback address; under a TMPDIR too long for a socket path it is refused
// with the reason (up then runs the rings over TCP) and nothing is left.
func TestLocalRingDir(t *testing.T) {
	dir, err := localRingDir()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("folder %s: %v, %v; want mode 0700", dir, fi, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the probe left %d files in %s", len(entries), dir)
	}
	os.RemoveAll(dir)

	long, err := os.MkdirTemp("", "up")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(long)
	deep := filepath.Join(long, strings.Repeat("x", 90))
	if err := os.Mkdir(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", deep)
	if dir, err := localRingDir(); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("under a long TMPDIR: %q, %v; want a path too long", dir, err)
	}
	if entries, _ := os.ReadDir(deep); len(entries) != 0 {
		t.Errorf("a refused folder was left in TMPDIR")
	}
}

// A worker gets one P more than its BLAS threads while the workers' threads
// fit the CPUs (never more than the CPUs, at least one), and no more than its
// threads once they oversubscribe them.
func TestWorkerProcs(t *testing.T) {
	cpus := runtime.NumCPU()
	for _, tc := range []struct{ threads, workers, want int }{
		{1, 1, min(2, cpus)},
		{cpus, 1, cpus},
		{1, cpus, min(2, cpus)},
		{1, cpus + 1, 1},
		{2, cpus, 2},
		{0, 1, 1},
	} {
		if tc.threads == 2 && cpus < 2 {
			continue
		}
		if got := workerProcs(tc.threads, tc.workers, true); got != tc.want {
			t.Errorf("workerProcs(%d threads, %d workers) = %d, want %d (%d CPUs)", tc.threads, tc.workers, got, tc.want, cpus)
		}
		// Without OpenBLAS, gonum's products use every P: no spare.
		if got, want := workerProcs(tc.threads, tc.workers, false), max(1, tc.threads); got != want {
			t.Errorf("workerProcs(%d threads, %d workers, pure Go) = %d, want %d", tc.threads, tc.workers, got, want)
		}
	}
}
