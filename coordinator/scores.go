package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/nice-flow/nice/train"
)

// The epoch scores are also kept in a small file of the state folder,
// written at each score: a checkpoint holds only the scores known when it
// was taken, and a coordinator restarted from an older checkpoint that goes
// on from its workers' newer state would otherwise lose the scores of the
// epochs in between. A score is a function of the state at the epoch's end,
// which does not depend on who computed it, so a kept score stays true
// whichever way training reaches that epoch again.

const scoresFile = "scores.json"

type scoresRecord struct {
	Config string              `json:"config"` // the run's configuration hash
	Epochs []train.EpochResult `json:"epochs"`
}

// LoadScores returns the scores kept in the state folder dir for the run
// with configuration hash config (none if the file is missing or belongs
// to another run). nice-coord verify reads them too.
func LoadScores(dir, config string) ([]train.EpochResult, error) {
	b, err := os.ReadFile(filepath.Join(dir, scoresFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", scoresFile, err)
	}
	var r scoresRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON (%v): delete it to start its record anew", filepath.Join(dir, scoresFile), err)
	}
	if r.Config != config {
		return nil, nil
	}
	return r.Epochs, nil
}

// saveScores writes the scores atomically (a temporary file renamed).
func saveScores(dir, config string, epochs []train.EpochResult) error {
	b, err := json.Marshal(scoresRecord{Config: config, Epochs: epochs})
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, scoresFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, scoresFile)); err != nil {
		return fmt.Errorf("writing %s: %w", scoresFile, err)
	}
	return nil
}

// MergeScores adds to have the epochs of more it lacks, sorted by epoch. It
// appends to have.
func MergeScores(have, more []train.EpochResult) []train.EpochResult {
	for _, e := range more {
		if !slices.ContainsFunc(have, func(h train.EpochResult) bool { return h.Epoch == e.Epoch }) {
			have = append(have, e)
		}
	}
	slices.SortFunc(have, func(a, b train.EpochResult) int { return a.Epoch - b.Epoch })
	return have
}
