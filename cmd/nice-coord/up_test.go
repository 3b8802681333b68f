package main

import (
	"context"
	"fmt"
	"path/filepath"
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
