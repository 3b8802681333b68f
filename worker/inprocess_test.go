package worker_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/membership"
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
	waitStatus(t, srv, "hold at step 5", func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == 5 && st.LastCheckpointStep == 5
	})
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

// The parts injected: the coordinator keeps its checkpoints in memory and
// watches a static membership, the workers reach it through in-memory
// sessions. A worker the membership declares dead while its session
// heartbeats is kept (gossip was wrong: seen after network cuts).
func TestInProcessClusterWithInjectedParts(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	defer goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))

	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.StopAt = 4
	mc.CheckpointEvery = 2
	store := checkpoint.NewMemory(checkpoint.MemoryOptions{})
	members := membership.NewStatic(membership.Member{Name: "coordinator", Meta: membership.Meta{Role: membership.RoleCoordinator}})
	logs := &syncBuffer{}
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", StateDir: t.TempDir(), Machine: mc,
		Store: store, Membership: members, Logger: slog.New(slog.NewTextHandler(logs, nil))})
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
		cfg.ID, cfg.Coordinator, cfg.Sessions = id, "", srv.InmemSessions()
		w, err := worker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	waitStatus(t, srv, "hold at step 4 with two training workers", func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == 4 && st.LastCheckpointStep == 4 && len(st.Workers) == 2 &&
			st.Workers[0].State == "training" && st.Workers[1].State == "training"
	})
	list, err := store.List(ctx)
	if err != nil || len(list) == 0 || list[len(list)-1].Info.Step != 4 {
		t.Fatalf("the in-memory store holds %+v (err %v), want the checkpoint at step 4 last", list, err)
	}
	a := membership.Member{Name: "worker-a", Addr: "127.0.0.1:1", Meta: membership.Meta{
		Role: membership.RoleWorker, WorkerID: "a", GRPCAddr: ws[0].Addr(), Incarnation: ws[0].Incarnation()}}
	members.Add(a)
	members.Remove(a.Name, membership.CauseFailed)
	// Its session heartbeats, so the coordinator believes the session over
	// gossip and keeps it.
	waitStatus(t, srv, "the coordinator to weigh the membership's verdict", func(coordinator.Status) bool {
		return strings.Contains(logs.String(), "gossip says a worker is gone, but its session is alive")
	})
	if st := srv.Status(); len(st.Workers) != 2 || strings.Contains(logs.String(), "worker a left") {
		t.Fatalf("a worker with a live session was detached on gossip's word: %+v", st.Workers)
	}
	cancel()
	wg.Wait()
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitStatus polls the coordinator's status until cond holds (five minutes
// at most: loading MNIST took a minute on an overloaded 2-core machine; the
// poll interval is not a synchronisation, the condition is).
func waitStatus(t *testing.T, srv *coordinator.Server, what string, cond func(coordinator.Status) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st := srv.Status()
		if cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within five minutes: %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
