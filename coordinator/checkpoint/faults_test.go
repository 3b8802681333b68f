package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// TestFailedSaveLeavesPreviousIntact fails the third save in different ways
// and checks that the two earlier checkpoints are still there, verified and
// loadable (also after reopening the file), and that the store still saves.
func TestFailedSaveLeavesPreviousIntact(t *testing.T) {
	const size = 5 * testChunk
	type setup struct {
		store Store
		path  string // bbolt file, "" for memory
	}
	cases := []struct {
		name    string
		open    func(t *testing.T, cancel context.CancelFunc) setup
		wantErr error
	}{
		{"bolt: wrapper fails 3rd save", func(t *testing.T, _ context.CancelFunc) setup {
			path := filepath.Join(t.TempDir(), "ckpt.db")
			return setup{WithFaults(openBolt(t, path, BoltOptions{}), OnKind(OpSave, FailNth(3))), path}
		}, ErrInjected},
		{"memory: wrapper fails 3rd save", func(t *testing.T, _ context.CancelFunc) setup {
			return setup{WithFaults(NewMemory(MemoryOptions{ChunkSize: testChunk}), OnKind(OpSave, FailNth(3))), ""}
		}, ErrInjected},
		{"bolt: 3rd save fails mid-transaction at chunk 3", func(t *testing.T, _ context.CancelFunc) setup {
			path := filepath.Join(t.TempDir(), "ckpt.db")
			inj := InjectorFunc(func(op Op) error {
				if op.Kind == OpPutChunk && op.Step == 3 && op.Chunk == 3 {
					return ErrInjected
				}
				return nil
			})
			return setup{openBolt(t, path, BoltOptions{Injector: inj}), path}
		}, ErrInjected},
		{"bolt: 3rd save fails just before commit", func(t *testing.T, _ context.CancelFunc) setup {
			path := filepath.Join(t.TempDir(), "ckpt.db")
			// Keep 2, so the failed transaction had already pruned step 1.
			return setup{openBolt(t, path, BoltOptions{Keep: 2, Injector: OnKind(OpCommit, FailNth(3))}), path}
		}, ErrInjected},
		{"bolt: 3rd save cancelled mid-transaction", func(t *testing.T, cancel context.CancelFunc) setup {
			path := filepath.Join(t.TempDir(), "ckpt.db")
			inj := InjectorFunc(func(op Op) error {
				if op.Kind == OpPutChunk && op.Step == 3 && op.Chunk == 2 {
					cancel()
				}
				return nil
			})
			return setup{openBolt(t, path, BoltOptions{Injector: inj}), path}
		}, context.Canceled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			st := tc.open(t, cancel)
			s := st.store
			t.Cleanup(func() { _ = s.Close() })
			b1 := save(t, s, 1, size)
			b2 := save(t, s, 2, size)
			if _, err := s.Save(ctx, metaFor(3), blobFor(3, size)); !errors.Is(err, tc.wantErr) {
				t.Fatalf("third save: %v, want %v", err, tc.wantErr)
			}
			check := func(s Store) {
				t.Helper()
				if steps, verified := listedSteps(t, s); !equal(steps, []uint64{1, 2}) || !verified[0] || !verified[1] {
					t.Fatalf("after failed save: steps %v verified %v, want 1 and 2 verified", steps, verified)
				}
				cp, report, err := s.LoadNewestValid(context.Background())
				if err != nil || cp.Step != 2 || !bytes.Equal(cp.Blob, b2) || len(report) != 0 {
					t.Fatalf("LoadNewestValid after failed save: %v, %v, %v", cp, report, err)
				}
				if cp, err := s.Load(context.Background(), 1); err != nil || !bytes.Equal(cp.Blob, b1) {
					t.Fatalf("Load(1) after failed save: %v", err)
				}
			}
			check(s)
			if st.path != "" {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = openBolt(t, st.path, BoltOptions{})
				check(s)
			}
			save(t, s, 4, size) // the store still works
		})
	}
}

func TestInjectors(t *testing.T) {
	nth := OnKind(OpSave, FailNth(2))
	ops := []Op{{Kind: OpList}, {Kind: OpSave, Step: 1}, {Kind: OpList}, {Kind: OpSave, Step: 2}, {Kind: OpSave, Step: 3}}
	var failed []uint64
	for _, op := range ops {
		if err := nth.MaybeError(op); err != nil {
			if !errors.Is(err, ErrInjected) {
				t.Errorf("error %v is not ErrInjected", err)
			}
			failed = append(failed, op.Step)
		}
	}
	if !equal(failed, []uint64{2}) {
		t.Errorf("OnKind(OpSave, FailNth(2)) failed steps %v, want [2]", failed)
	}

	hookCalls := 0
	both := Any(InjectorFunc(func(Op) error { hookCalls++; return nil }), FailNth(1))
	if err := both.MaybeError(Op{}); !errors.Is(err, ErrInjected) || hookCalls != 1 {
		t.Errorf("Any: err %v, hook calls %d", err, hookCalls)
	}
}
