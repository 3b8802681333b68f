package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testChunk keeps blobs small while still spanning several chunks.
const testChunk = 1024

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openBolt opens a bbolt store in the test's directory and closes it at
// cleanup (a second Close is harmless for the tests that close early).
func openBolt(t *testing.T, path string, opts BoltOptions) *Bolt {
	t.Helper()
	if opts.ChunkSize == 0 {
		opts.ChunkSize = testChunk
	}
	opts.Logger = testLogger(t)
	s, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// storeKinds runs a test against every Store implementation.
var storeKinds = []struct {
	name string
	open func(t *testing.T, keep int) Store
}{
	{"bolt", func(t *testing.T, keep int) Store {
		return openBolt(t, filepath.Join(t.TempDir(), "ckpt.db"), BoltOptions{Keep: keep})
	}},
	{"memory", func(t *testing.T, keep int) Store {
		s := NewMemory(MemoryOptions{Keep: keep, ChunkSize: testChunk})
		t.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

// blobFor is a deterministic, step-specific blob.
func blobFor(step uint64, size int) []byte {
	r := rand.New(rand.NewPCG(step, 7))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func metaFor(step uint64) Meta {
	return Meta{
		Step: step, Epoch: step / 10, StepInEpoch: step % 10, Generation: step/50 + 1,
		Time:       time.Date(2025, 1, 2, 3, 4, 5, int(step), time.UTC),
		ConfigHash: "cfg-abc",
	}
}

func save(t *testing.T, s Store, step uint64, size int) []byte {
	t.Helper()
	blob := blobFor(step, size)
	info, err := s.Save(context.Background(), metaFor(step), blob)
	if err != nil {
		t.Fatalf("Save(step %d): %v", step, err)
	}
	if info.Step != step || info.Size != int64(size) {
		t.Fatalf("Save(step %d) = %+v", step, info)
	}
	return blob
}

func listedSteps(t *testing.T, s Store) (steps []uint64, verified []bool) {
	t.Helper()
	ls, err := s.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, l := range ls {
		steps = append(steps, l.Info.Step)
		verified = append(verified, l.Verified())
	}
	return steps, verified
}

func TestRoundTrip(t *testing.T) {
	sizes := map[uint64]int{10: 0, 20: 1, 30: testChunk, 40: 3*testChunk + 17}
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, 10)
			blobs := map[uint64][]byte{}
			for _, step := range []uint64{10, 20, 30, 40} {
				blobs[step] = save(t, s, step, sizes[step])
			}
			ls, err := s.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(ls) != 4 {
				t.Fatalf("List has %d entries, want 4", len(ls))
			}
			for i, l := range ls {
				want := metaFor(uint64(10 * (i + 1)))
				if !l.Verified() {
					t.Errorf("step %d not verified: %v", l.Info.Step, l.Problem)
				}
				got := l.Info.Meta
				if !got.Time.Equal(want.Time) {
					t.Errorf("step %d time %v, want %v", want.Step, got.Time, want.Time)
				}
				got.Time = want.Time
				if got != want {
					t.Errorf("listed meta %+v, want %+v", got, want)
				}
				if l.Info.Size != int64(sizes[want.Step]) || l.Info.Chunks != chunkCount(l.Info.Size, testChunk) {
					t.Errorf("step %d: size %d in %d chunks", want.Step, l.Info.Size, l.Info.Chunks)
				}
			}
			for step, blob := range blobs {
				cp, err := s.Load(context.Background(), step)
				if err != nil {
					t.Fatalf("Load(%d): %v", step, err)
				}
				if !bytes.Equal(cp.Blob, blob) {
					t.Errorf("Load(%d) returned a different blob", step)
				}
			}
			cp, report, err := s.LoadNewestValid(context.Background())
			if err != nil || cp.Step != 40 || len(report) != 0 || !bytes.Equal(cp.Blob, blobs[40]) {
				t.Errorf("LoadNewestValid = step %v, report %v, err %v", cp, report, err)
			}
		})
	}
}

func TestEmptyAndMissing(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, 0)
			if _, _, err := s.LoadNewestValid(context.Background()); !errors.Is(err, ErrNoCheckpoint) {
				t.Errorf("LoadNewestValid on empty store: %v, want ErrNoCheckpoint", err)
			}
			save(t, s, 5, 100)
			if _, err := s.Load(context.Background(), 6); !errors.Is(err, ErrNotFound) {
				t.Errorf("Load(missing step): %v, want ErrNotFound", err)
			}
		})
	}
}

func TestKeepLastK(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			s := kind.open(t, 3)
			for step := uint64(1); step <= 6; step++ {
				save(t, s, step, 2*testChunk+int(step))
			}
			steps, _ := listedSteps(t, s)
			if want := []uint64{4, 5, 6}; !equal(steps, want) {
				t.Fatalf("after 6 saves with keep 3: steps %v, want %v", steps, want)
			}
			// Re-saving an existing step replaces it without growing the set.
			blob := save(t, s, 5, 10)
			if cp, err := s.Load(context.Background(), 5); err != nil || !bytes.Equal(cp.Blob, blob) {
				t.Fatalf("replaced step 5: %v", err)
			}
			// A step older than all retained ones is pruned at once.
			save(t, s, 2, 10)
			if steps, _ := listedSteps(t, s); !equal(steps, []uint64{4, 5, 6}) {
				t.Fatalf("after saving old step 2: steps %v", steps)
			}
		})
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.db")
	s := openBolt(t, path, BoltOptions{})
	blobs := map[uint64][]byte{}
	for _, step := range []uint64{7, 8, 9} {
		blobs[step] = save(t, s, step, 5*testChunk/2)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close: %v, want ErrClosed", err)
	}

	s = openBolt(t, path, BoltOptions{})
	steps, verified := listedSteps(t, s)
	if !equal(steps, []uint64{7, 8, 9}) || verified[0] != true || verified[1] != true || verified[2] != true {
		t.Fatalf("after reopen: steps %v verified %v", steps, verified)
	}
	for step, blob := range blobs {
		if cp, err := s.Load(context.Background(), step); err != nil || !bytes.Equal(cp.Blob, blob) {
			t.Errorf("Load(%d) after reopen: %v", step, err)
		}
	}
}

func TestLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.db")
	first := openBolt(t, path, BoltOptions{})
	save(t, first, 1, 10)

	for _, readOnly := range []bool{false, true} {
		start := time.Now()
		s, err := OpenBolt(path, BoltOptions{LockTimeout: 100 * time.Millisecond, ReadOnly: readOnly})
		if err == nil {
			_ = s.Close()
			t.Fatalf("second open (read-only %v) succeeded while the file is held", readOnly)
		}
		if !errors.Is(err, ErrLocked) {
			t.Errorf("second open (read-only %v): %v, want ErrLocked", readOnly, err)
		}
		want := "checkpoint file " + path + " is locked by another process"
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not say %q", err, want)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("second open took %v", d)
		}
	}

	// Once the owner is gone, a read-only inspector can list but not save.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ro := openBolt(t, path, BoltOptions{ReadOnly: true})
	if steps, _ := listedSteps(t, ro); !equal(steps, []uint64{1}) {
		t.Errorf("read-only list: %v", steps)
	}
	if _, err := ro.Save(context.Background(), metaFor(2), nil); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Save: %v, want ErrReadOnly", err)
	}
}
