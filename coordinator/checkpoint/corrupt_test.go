package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// damageBolt edits the checkpoint at step directly in the closed file at
// path, standing in for a disk or a bug that altered stored bytes.
func damageBolt(t *testing.T, path string, step uint64, edit func(cp, chunks *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		cp := tx.Bucket(rootBucket).Bucket(stepKey(step))
		return edit(cp, cp.Bucket(chunksBucket))
	})
	if err != nil {
		t.Fatalf("damaging step %d: %v", step, err)
	}
}

func editChunk(i int, f func([]byte) []byte) func(cp, chunks *bolt.Bucket) error {
	return func(_, chunks *bolt.Bucket) error {
		return chunks.Put(chunkKey(i), f(bytes.Clone(chunks.Get(chunkKey(i)))))
	}
}

func editMeta(f func(string) string) func(cp, chunks *bolt.Bucket) error {
	return func(cp, _ *bolt.Bucket) error {
		return cp.Put(metaKey, []byte(f(string(cp.Get(metaKey)))))
	}
}

func TestCorruptNewestFallsBack(t *testing.T) {
	const size = 3*testChunk + 100 // four chunks
	cases := []struct {
		name string
		edit func(cp, chunks *bolt.Bucket) error
		kind error
	}{
		{"flipped byte", editChunk(1, func(b []byte) []byte { b[17] ^= 0x01; return b }), ErrChecksumMismatch},
		{"truncated chunk", editChunk(2, func(b []byte) []byte { return b[:len(b)-1] }), ErrChunkSize},
		{"truncated last chunk", editChunk(3, func(b []byte) []byte { return b[:10] }), ErrChunkSize},
		{"missing chunk", func(_, chunks *bolt.Bucket) error { return chunks.Delete(chunkKey(2)) }, ErrMissingChunk},
		{"extra chunk", func(_, chunks *bolt.Bucket) error { return chunks.Put(chunkKey(4), []byte("x")) }, ErrChunkSize},
		{"missing chunks bucket", func(cp, _ *bolt.Bucket) error { return cp.DeleteBucket(chunksBucket) }, ErrMissingChunk},
		{"unparseable metadata", editMeta(func(s string) string { return s[:len(s)/2] }), ErrBadMetadata},
		{"missing metadata", func(cp, _ *bolt.Bucket) error { return cp.Delete(metaKey) }, ErrBadMetadata},
		{"unknown version", editMeta(func(s string) string {
			return strings.Replace(s, `"version":1`, `"version":2`, 1)
		}), ErrBadMetadata},
		{"step mismatch", editMeta(func(s string) string {
			return strings.Replace(s, `"step":120`, `"step":121`, 1)
		}), ErrBadMetadata},
		{"size inconsistent", editMeta(func(s string) string {
			return strings.Replace(s, `"size":3172`, `"size":9999`, 1)
		}), ErrBadMetadata},
		// A record may claim any size: the blob is allocated only once the
		// chunks add up to it (this one made the load die of out-of-memory).
		{"terabyte claimed", editMeta(func(s string) string {
			return strings.Replace(s, `"size":3172,"chunk_size":1024,"chunks":4`, `"size":1099511627776,"chunk_size":1073741824,"chunks":1024`, 1)
		}), ErrChunkSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ckpt.db")
			s := openBolt(t, path, BoltOptions{})
			save(t, s, 100, size)
			want := save(t, s, 110, size)
			save(t, s, 120, size)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			damageBolt(t, path, 120, tc.edit)

			s = openBolt(t, path, BoltOptions{})
			cp, report, err := s.LoadNewestValid(context.Background())
			if err != nil {
				t.Fatalf("LoadNewestValid: %v", err)
			}
			if cp.Step != 110 || !bytes.Equal(cp.Blob, want) {
				t.Errorf("resumed from step %d, want 110 with its blob", cp.Step)
			}
			if len(report) != 1 || report[0].Step != 120 || !errors.Is(report[0], tc.kind) || !errors.Is(report[0], ErrCorrupt) {
				t.Fatalf("report %v, want step 120 with %v", report, tc.kind)
			}
			t.Logf("report: %v", report[0])

			ls, err := s.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(ls) != 3 || !ls[0].Verified() || !ls[1].Verified() || ls[2].Verified() || ls[2].Info.Step != 120 {
				t.Errorf("List = %+v, want 100 and 110 verified, 120 not", ls)
			}
			if _, err := s.Load(context.Background(), 120); !errors.Is(err, tc.kind) {
				t.Errorf("Load(120): %v, want %v", err, tc.kind)
			}
		})
	}
}

// TestCorruptFileBytes flips one byte of chunk data in the file itself:
// bbolt has no checksums over values, so only ours can catch it.
func TestCorruptFileBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.db")
	s := openBolt(t, path, BoltOptions{})
	save(t, s, 1, 4*testChunk)
	newest := save(t, s, 2, 4*testChunk)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	needle := newest[2*testChunk+100 : 2*testChunk+164]
	at := bytes.Index(file, needle)
	if at < 0 || bytes.Contains(file[at+1:], needle) {
		t.Fatalf("chunk bytes found at %d (want exactly one place)", at)
	}
	file[at+10] ^= 0x80
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, BoltOptions{})
	cp, report, err := s.LoadNewestValid(context.Background())
	if err != nil || cp.Step != 1 {
		t.Fatalf("LoadNewestValid = %v, %v; want step 1", cp, err)
	}
	if len(report) != 1 || !errors.Is(report[0], ErrChecksumMismatch) {
		t.Fatalf("report %v, want a sha256 mismatch at step 2", report)
	}
	if got, want := report[0].Error(), "checkpoint at step 2 is corrupt (sha256 mismatch)"; got != want {
		t.Errorf("report says %q, want %q", got, want)
	}
}

func TestMemoryDamage(t *testing.T) {
	s := NewMemory(MemoryOptions{ChunkSize: testChunk})
	t.Cleanup(func() { _ = s.Close() })
	save(t, s, 1, 3*testChunk)
	save(t, s, 2, 3*testChunk)
	save(t, s, 3, 3*testChunk)
	if err := s.FlipByte(3, testChunk+5); err != nil {
		t.Fatal(err)
	}
	if err := s.DropChunk(2, 2); err != nil {
		t.Fatal(err)
	}
	cp, report, err := s.LoadNewestValid(context.Background())
	if err != nil || cp.Step != 1 {
		t.Fatalf("LoadNewestValid = %v, %v; want step 1", cp, err)
	}
	if len(report) != 2 || !errors.Is(report[0], ErrChecksumMismatch) || !errors.Is(report[1], ErrMissingChunk) {
		t.Fatalf("report %v", report)
	}

	if err := s.FlipByte(1, 0); err != nil {
		t.Fatal(err)
	}
	_, report, err = s.LoadNewestValid(context.Background())
	if !errors.Is(err, ErrNoCheckpoint) || len(report) != 3 {
		t.Fatalf("all corrupt: err %v, report %v", err, report)
	}
}
