package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/train"
)

// seedStore makes st the first checkpoint of the coordinator whose state
// folder is dir, so that it starts from st as from any checkpoint of its
// own: the single-process state's encoding is the checkpoint blob's. The
// folder must hold no checkpoint yet: a coordinator resumes from its own,
// and mixing two runs there would make "newest" meaningless.
func seedStore(ctx context.Context, dir string, keep int, st *train.State) (checkpoint.Info, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return checkpoint.Info{}, fmt.Errorf("state folder: %w", err)
	}
	path := filepath.Join(dir, "nice.db")
	store, err := checkpoint.OpenBolt(path, checkpoint.BoltOptions{Keep: keep})
	if err != nil {
		return checkpoint.Info{}, err
	}
	defer store.Close()
	list, err := store.List(ctx)
	if err != nil {
		return checkpoint.Info{}, fmt.Errorf("reading %s: %w", path, err)
	}
	if n := len(list); n > 0 {
		return checkpoint.Info{}, fmt.Errorf("%s already holds %d checkpoints (the newest at step %d): the coordinator resumes from those; "+
			"to start a cluster from another run, give it an empty --state-dir", path, n, list[n-1].Info.Step)
	}
	blob, err := st.Encode()
	if err != nil {
		return checkpoint.Info{}, err
	}
	meta := checkpoint.Meta{Step: uint64(st.Position.Step), Epoch: uint64(st.Position.Epoch), StepInEpoch: uint64(st.Position.StepInEpoch),
		Time: time.Now(), ConfigHash: st.Config.Hash()}
	info, err := store.Save(ctx, meta, blob)
	if err != nil {
		return info, fmt.Errorf("storing the state as the first checkpoint of %s: %w", path, err)
	}
	return info, store.Close()
}
