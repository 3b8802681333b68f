package worker_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/worker"
)

// stallTransfer opens a state transfer from the worker at addr and never
// reads it, as a stuck or hostile receiver does: its flow-control windows
// are small (no window probing), so the source's sends block from the
// second chunk on (gRPC queues the first whole). It reports on started once the source sent its first
// chunk (its headers arrived); the transfer stays open until the test ends.
func stallTransfer(t *testing.T, addr string, req *nicepb.FetchStateRequest, started chan<- error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	go func() {
		stream, err := nicepb.NewStateServiceClient(conn).FetchState(ctx, req)
		if err == nil {
			_, err = stream.Header()
		}
		started <- err
	}()
}

// A receiver that takes part of a state and then stops reading does not
// stop the worker serving it from training or from applying a commit that
// takes a snapshot: the live state is sent from a copy made under the
// trainer's lock, a snapshot from itself, and the next snapshot goes to
// another buffer. (A worker used to send while holding the trainer's lock,
// or the snapshot's, so that such a receiver froze training.) The state is
// three chunks long, so a receiver that does not read blocks its source
// before the state is written.
func TestStalledStateTransferDoesNotStopTraining(t *testing.T) {
	needMNIST(t)
	cases := []struct {
		name string
		req  *nicepb.FetchStateRequest
	}{
		{"live state at step 0", &nicepb.FetchStateRequest{Position: &nicepb.Position{}}},
		{"snapshot at step 2", &nicepb.FetchStateRequest{Position: &nicepb.Position{Step: 2, StepInEpoch: 2}, Snapshot: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Last: after the cluster stopped and the stalled transfer closed.
			t.Cleanup(func() {
				goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
			})
			tc2, mc := tinyRun(350, 4)
			// About 800,000 parameters: 9.6 MB of state, three chunks, so
			// that a source sends a second one before its state is written.
			tc2.Model.HiddenLayers = 2
			tc2.Batch = 8
			mc.MinWorkers = 2
			mc.CheckpointEvery = 2
			c := startCoordinator(t, coordinator.Config{Train: tc2, Machine: mc})
			defer c.stop()
			start := func(id string) *worker.Worker {
				return c.startWorker(id, func(cfg *worker.Config) {
					// The stalled transfer neither crowds out the checkpoints nor
					// ends (by the source's limits) before the run gets to its hold.
					cfg.StateTransfers = statexfer.ServeLimits{MaxTransfers: 4, TransferTimeout: time.Hour, SendTimeout: time.Hour}
				})
			}
			a := start("a")
			c.waitStatus("worker a alone, waiting for a second", func(st coordinator.Status) bool { return len(st.Workers) == 1 })
			c.waitStatus("worker a to load its configuration", func(coordinator.Status) bool { return a.State() != nil })
			stalled := make(chan error, 1)
			stallTransfer(t, a.Addr(), tc.req, stalled)
			if !tc.req.Snapshot {
				// The live state is served while a holds it: before b joins.
				if err := <-stalled; err != nil {
					t.Fatalf("the transfer to stall did not start: %v", err)
				}
			}
			start("b")
			if tc.req.Snapshot {
				if err := <-stalled; err != nil {
					t.Fatalf("the transfer to stall did not start: %v", err)
				}
			}
			c.waitStatus("both workers trained to the hold at step 4, its checkpoint taken", func(st coordinator.Status) bool {
				return st.Phase == "holding" && st.Step == 4 && st.LastCheckpointStep == 4
			})
			if s := a.Stats(); s.Applied != 4 {
				t.Fatalf("worker a applied %d steps, want 4", s.Applied)
			}
		})
	}
}
