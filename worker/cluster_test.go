package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/testwait"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// statusWait bounds a wait on the coordinator's status: five minutes, since
// loading MNIST took a minute on an overloaded 2-core machine.
const statusWait = 5 * time.Minute

// needMNIST skips a test that trains on MNIST in -short mode or when the
// data is not there.
func needMNIST(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
}

// tinyRun is the configuration these tests train: a small model (two
// couplings of one hidden layer of width hidden), the default batch of 256,
// and a coordinator that settles joins for 100 ms and holds at stopAt.
func tinyRun(hidden, stopAt int) (train.Config, coordinator.MachineConfig) {
	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: hidden, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.StopAt = int64(stopAt)
	return tc, mc
}

// inprocCluster is a coordinator and its workers in this test process. stop
// (also run when the test ends) ends them all and waits for them.
type inprocCluster struct {
	t      *testing.T
	srv    *coordinator.Server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// startCoordinator serves cfg, listening on a free loopback port and
// keeping its state in a temporary folder unless cfg says otherwise.
func startCoordinator(t *testing.T, cfg coordinator.Config) *inprocCluster {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	srv, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &inprocCluster{t: t, srv: srv}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	t.Cleanup(c.stop)
	c.wg.Add(1)
	go func() { defer c.wg.Done(); srv.Serve(c.ctx) }()
	return c
}

// startWorker runs a worker named id that reaches the coordinator over
// loopback gRPC; edit, if not nil, changes its configuration first.
func (c *inprocCluster) startWorker(id string, edit func(*worker.Config)) *worker.Worker {
	c.t.Helper()
	cfg := worker.DefaultConfig()
	cfg.ID, cfg.Coordinator = id, c.srv.Addr()
	if edit != nil {
		edit(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); w.Run(c.ctx) }()
	return w
}

// waitStatus waits until the coordinator's status meets cond and returns it.
func (c *inprocCluster) waitStatus(what string, cond func(coordinator.Status) bool) coordinator.Status {
	c.t.Helper()
	return testwait.For(c.t, statusWait, what, c.srv.Status, cond)
}

// stop ends the coordinator and the workers and waits until they returned.
func (c *inprocCluster) stop() {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
	})
}
