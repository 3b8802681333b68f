package train

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A save that cannot complete says where it failed and leaves no temporary
// file behind; the state already at the path is untouched.
func TestSaveFileErrorsNameThePath(t *testing.T) {
	st := mustTrainer(t, tinyConfig(), syntheticData()).State()
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		prep func(t *testing.T, path string)
	}{
		{name: "folder missing", path: filepath.Join(dir, "absent", "state.nice")},
		{name: "a folder is in the way", path: filepath.Join(dir, "taken"), prep: func(t *testing.T, path string) {
			// A non-empty folder cannot be renamed over.
			if err := os.MkdirAll(filepath.Join(path, "inside"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prep != nil {
				tc.prep(t, tc.path)
			}
			err := st.SaveFile(tc.path)
			if err == nil {
				t.Fatalf("saving to %s succeeded", tc.path)
			}
			if !strings.Contains(err.Error(), tc.path) {
				t.Errorf("error %q does not name %s", err, tc.path)
			}
			left, _ := filepath.Glob(filepath.Join(dir, ".state-*"))
			if len(left) > 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	if err := syncDir(dir); err != nil {
		t.Fatalf("syncing an existing folder: %v", err)
	}
	missing := filepath.Join(dir, "absent")
	if err := syncDir(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("syncing a missing folder: err %v, want one naming %s", err, missing)
	}
}
