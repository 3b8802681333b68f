package worker_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/membership"
	"github.com/nice-flow/nice/worker"
)

// A coordinator and two workers in this process, over real loopback gRPC:
// they train to a step limit, every worker applies every committed step, and
// shutting everything down leaves no goroutine behind. Run under -race.
func TestInProcessClusterStopsCleanly(t *testing.T) {
	needMNIST(t)
	// flow's loop pool lives for the process; everything else must end.
	defer goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))

	tc, mc := tinyRun(8, 5)
	c := startCoordinator(t, coordinator.Config{Train: tc, Machine: mc})
	ws := []*worker.Worker{c.startWorker("a", nil), c.startWorker("b", nil)}
	c.waitStatus("hold at step 5", func(st coordinator.Status) bool {
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
	c.stop()
}

// The parts injected: the coordinator keeps its checkpoints in memory and
// watches a static membership, the workers reach it through in-memory
// sessions. A worker the membership declares dead while its session
// heartbeats is kept (gossip was wrong: seen after network cuts).
func TestInProcessClusterWithInjectedParts(t *testing.T) {
	needMNIST(t)
	defer goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))

	tc, mc := tinyRun(8, 4)
	mc.CheckpointEvery = 2
	store := checkpoint.NewMemory(checkpoint.MemoryOptions{})
	members := membership.NewStatic(membership.Member{Name: "coordinator", Meta: membership.Meta{Role: membership.RoleCoordinator}})
	logs := &syncBuffer{}
	c := startCoordinator(t, coordinator.Config{Train: tc, Machine: mc,
		Store: store, Membership: members, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	inmem := func(cfg *worker.Config) { cfg.Coordinator, cfg.Sessions = "", c.srv.InmemSessions() }
	ws := []*worker.Worker{c.startWorker("a", inmem), c.startWorker("b", inmem)}
	c.waitStatus("hold at step 4 with two training workers", func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == 4 && st.LastCheckpointStep == 4 && len(st.Workers) == 2 &&
			st.Workers[0].State == "training" && st.Workers[1].State == "training"
	})
	list, err := store.List(c.ctx)
	if err != nil || len(list) == 0 || list[len(list)-1].Info.Step != 4 {
		t.Fatalf("the in-memory store holds %+v (err %v), want the checkpoint at step 4 last", list, err)
	}
	a := membership.Member{Name: "worker-a", Addr: "127.0.0.1:1", Meta: membership.Meta{
		Role: membership.RoleWorker, WorkerID: "a", GRPCAddr: ws[0].Addr(), Incarnation: ws[0].Incarnation()}}
	members.Add(a)
	members.Remove(a.Name, membership.CauseFailed)
	// Its session heartbeats, so the coordinator believes the session over
	// gossip and keeps it.
	c.waitStatus("the coordinator to weigh the membership's verdict", func(coordinator.Status) bool {
		return strings.Contains(logs.String(), "gossip says a worker is gone, but its session is alive")
	})
	if st := c.srv.Status(); len(st.Workers) != 2 || strings.Contains(logs.String(), "worker a left") {
		t.Fatalf("a worker with a live session was detached on gossip's word: %+v", st.Workers)
	}
	c.stop()
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
