package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nice-flow/nice/train"
)

// Scores kept on disk come back for the same run only, merge without
// duplicates, and a damaged file is refused with a message saying what to do.
func TestScoresFile(t *testing.T) {
	dir := t.TempDir()
	if got, err := LoadScores(dir, "run"); err != nil || got != nil {
		t.Fatalf("no file: %v, %v", got, err)
	}
	e1, e2 := train.EpochResult{Epoch: 1, TestLL: -900}, train.EpochResult{Epoch: 2, TestLL: -700}
	if err := saveScores(dir, "run", []train.EpochResult{e1, e2}); err != nil {
		t.Fatal(err)
	}
	got, err := LoadScores(dir, "run")
	if err != nil || len(got) != 2 || got[1] != e2 {
		t.Fatalf("loaded %v, %v", got, err)
	}
	if other, err := LoadScores(dir, "another run"); err != nil || other != nil {
		t.Fatalf("another run's scores were taken: %v, %v", other, err)
	}
	merged := MergeScores([]train.EpochResult{e2}, got)
	if len(merged) != 2 || merged[0] != e1 || merged[1] != e2 {
		t.Fatalf("merged %v", merged)
	}
	if err := os.WriteFile(filepath.Join(dir, scoresFile), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadScores(dir, "run"); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("a damaged file gave %v", err)
	}
}
