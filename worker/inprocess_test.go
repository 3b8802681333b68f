package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// A coordinator and two workers in this process, over real loopback gRPC:
// they train to a step limit, every worker applies every committed step, and
// shutting everything down leaves no goroutine behind. Run under -race.
func TestInProcessClusterStopsCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	// flow's loop pool lives for the process; everything else must end.
	defer goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))

	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.StopAt = 5
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", StateDir: t.TempDir(), Machine: mc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(ctx) }()
	var ws []*worker.Worker
	for _, id := range []string{"a", "b"} {
		cfg := worker.DefaultConfig()
		cfg.ID, cfg.Coordinator = id, srv.Addr()
		w, err := worker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	deadline := time.Now().Add(time.Minute)
	for {
		st := srv.Status()
		if st.Phase == "holding" && st.Step == 5 && st.LastCheckpointStep == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hold at step 5 within a minute: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, w := range ws {
		if s := w.Stats(); s.Applied != 5 || s.Position.Step != 5 {
			t.Errorf("worker %s applied %d steps, at step %d; want 5", w.ID(), s.Applied, s.Position.Step)
		}
	}
	a, b := ws[0].State(), ws[1].State()
	if a.Digest() != b.Digest() {
		t.Fatal("the two replicas hold different states")
	}
	cancel()
	wg.Wait()
}
