package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// startSnapshot fetches the state r names from a worker in the background,
// adds the epoch scores it lacks, and hands it to the checkpoint writer. One
// runs at a time: a request that comes while one runs waits for it, and a
// newer request replaces a waiting older one (the newest state is the one
// worth keeping: a hold's or a shutdown's checkpoint is never skipped).
func (s *Server) startSnapshot(r *SnapshotRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snapping != nil {
		switch {
		case s.snapping.Position == r.Position:
			// Already being taken.
		case s.nextSnap != nil && s.nextSnap.Position.Step > r.Position.Step:
			// A newer one waits already.
		default:
			if s.nextSnap != nil {
				s.log.Debug("a newer checkpoint replaces one still waiting", "step", r.Position.Step, "replaced", s.nextSnap.Position.Step)
			}
			s.nextSnap = r
		}
		return
	}
	s.snapping = r
	s.wg.Add(1)
	go s.snapshotLoop(r)
}

// snapshotLoop takes r, then any request that came meanwhile.
func (s *Server) snapshotLoop(r *SnapshotRequest) {
	defer s.wg.Done()
	for r != nil {
		if err := s.takeSnapshot(r); err != nil {
			s.log.Error("checkpoint not taken", "step", r.Position.Step, "err", err)
		}
		s.mu.Lock()
		r, s.nextSnap = s.nextSnap, nil
		s.snapping = r
		s.mu.Unlock()
	}
	if s.stopRequested() {
		s.stopWhenSaved()
	}
}

func (s *Server) stopRequested() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

func (s *Server) takeSnapshot(r *SnapshotRequest) error {
	t0 := time.Now()
	conn, err := grpc.NewClient(r.Addr, s.cfg.Creds.DialOption(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	size, err := statexfer.ExpectConfig(s.cfg.Train)
	if err != nil {
		return err
	}
	blob, err := statexfer.Fetch(ctx, conn, statexfer.Request{Source: r.Addr, Position: statexfer.ToPB(r.Position), Snapshot: !r.Live, Size: size})
	if err != nil {
		return err
	}
	fetched := time.Since(t0)
	s.obs.fetchSeconds.Observe(fetched.Seconds())
	st, err := train.DecodeState(blob)
	if err != nil {
		return fmt.Errorf("state from %s: %w", r.Addr, err)
	}
	if st.Position != r.Position {
		return fmt.Errorf("state from %s is at step %d, asked for %d", r.Addr, st.Position.Step, r.Position.Step)
	}
	digest := st.Digest()
	if err := s.awaitAgreement(st.Position, digest); err != nil {
		s.mu.Lock()
		s.status.CheckpointsRefused++
		s.mu.Unlock()
		s.dash.noteRefusedCheckpoint(st.Position.Step, err)
		return fmt.Errorf("checkpoint of the state from %s refused: %w", r.Addr, err)
	}
	// Scores of finished epochs are known here first: put them in the
	// history the checkpoint keeps.
	s.mu.Lock()
	have := map[int]bool{}
	for _, e := range st.History.Epochs {
		have[e.Epoch] = true
	}
	added := false
	for _, e := range s.scores {
		if !have[e.Epoch] && e.Epoch <= st.Position.Epoch {
			st.History.Epochs = append(st.History.Epochs, e)
			added = true
		}
	}
	s.mu.Unlock()
	if added {
		if blob, err = st.Encode(); err != nil {
			return fmt.Errorf("state from %s with the epoch scores: %w", r.Addr, err)
		}
	}
	meta := checkpoint.Meta{Step: uint64(st.Position.Step), Epoch: uint64(st.Position.Epoch), StepInEpoch: uint64(st.Position.StepInEpoch),
		Generation: r.Generation, Time: time.Now(), ConfigHash: st.Config.Hash()}
	if err := s.writer.Submit(meta, blob); err != nil {
		return err
	}
	s.mu.Lock()
	if st.Position.Step >= s.own.pos.Step {
		s.own = ownState{pos: st.Position, blob: blob, digest: digest} // the machine keeps the newer too
	}
	s.status.LastSnapshotFetchSeconds = fetched.Seconds()
	s.mu.Unlock()
	s.post(event{saved: &savedState{pos: st.Position, digest: digest}})
	s.dash.drawSamples(st)
	if st.Position.StepInEpoch == 0 && s.cfg.Samples > 0 {
		if err := s.writeImages(st); err != nil {
			s.log.Warn("sample grid not written", "err", err)
		}
	}
	return nil
}

// agreeWait bounds how long a fetched state waits for the replicas to agree
// on its step: the members' digests of a snapshot come right after they
// apply its commit, and a live state's agreement when its generation is
// admitted.
var agreeWait = time.Minute

// awaitAgreement returns nil once the replicas agreed on the state at pos
// having digest d, and an error if they agreed on another digest or not at
// all within agreeWait: a checkpoint is never stored on one worker's word.
func (s *Server) awaitAgreement(pos train.Position, d uint64) error {
	timeout := time.NewTimer(agreeWait)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		agreed, changed := s.agreed, s.agreedChanged
		s.mu.Unlock()
		for _, a := range agreed {
			if a.Position != pos {
				continue
			}
			if a.Digest != d {
				return fmt.Errorf("the state at step %d has digest %016x, the replicas agreed on %016x", pos.Step, d, a.Digest)
			}
			return nil
		}
		if len(agreed) > 0 && agreed[0].Position.Step > pos.Step {
			return fmt.Errorf("the replicas' agreement on step %d is no longer known (the newest agreements are from step %d on)", pos.Step, agreed[0].Position.Step)
		}
		select {
		case <-changed:
		case <-s.loopDone:
			return fmt.Errorf("the coordinator stopped before the replicas agreed on step %d", pos.Step)
		case <-timeout.C:
			return fmt.Errorf("the replicas did not agree on a state at step %d within %v", pos.Step, agreeWait)
		}
	}
}

func (s *Server) writeImages(st *train.State) error {
	m, err := flow.New(st.Config.Model)
	if err != nil {
		return err
	}
	copy(m.Params, st.Params)
	name := "test"
	if st.Config.Validation {
		name = "validation"
	}
	return train.WriteEpochImages(s.cfg.StateDir, m, st.History, name, st.Position.Epoch, s.cfg.Samples, st.Config.Seed+uint64(st.Position.Epoch))
}

// onSaved runs on the checkpoint writer's goroutine after each write. A
// failure shows in the status and the health until a checkpoint at or after
// its step is stored, and the next commit takes a new checkpoint.
func (s *Server) onSaved(r checkpoint.Result) {
	if errors.Is(r.Err, checkpoint.ErrSuperseded) {
		return // a newer checkpoint took its place before it was written
	}
	s.dash.noteSaved(r)
	if r.Err != nil {
		s.log.Error("checkpoint write failed; the previous ones stand, and health is degraded until one is written", "step", r.Meta.Step, "err", r.Err)
		s.noteCheckpointFailure(r.Meta.Step, r.Err)
		return
	}
	s.obs.ckptSeconds.Observe(r.Duration.Seconds())
	s.obs.ckptBytes.Add(float64(r.Info.Size))
	s.mu.Lock()
	s.status.LastCheckpointStep = int64(r.Meta.Step)
	s.status.lastCheckpointTime = r.Meta.Time
	s.status.LastCheckpointWriteSeconds = r.Duration.Seconds()
	s.status.LastCheckpointBytes = r.Info.Size
	recovered := s.status.LastCheckpointError
	if recovered != nil && recovered.Step <= int64(r.Meta.Step) {
		s.status.LastCheckpointError = nil
	} else {
		recovered = nil
	}
	s.mu.Unlock()
	if recovered != nil {
		s.log.Info("checkpoints are written again", "step", r.Meta.Step, "failures", recovered.Failures, "since", recovered.Since)
		s.refreshHealth()
	}
	pos := train.Position{Step: int64(r.Meta.Step), Epoch: int(r.Meta.Epoch), StepInEpoch: int(r.Meta.StepInEpoch)}
	s.post(event{stored: &pos})
}

// WriteState serves the coordinator's own state (a checkpoint, or the
// initial state) to workers.
func (s *Server) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), w io.Writer) error {
	s.mu.Lock()
	own := s.own
	s.mu.Unlock()
	if snapshot || own.pos != statexfer.FromPB(pos) {
		return fmt.Errorf("%w: the coordinator holds the state at step %d", statexfer.ErrUnavailable, own.pos.Step)
	}
	size(int64(len(own.blob)))
	_, err := w.Write(own.blob)
	return err
}
