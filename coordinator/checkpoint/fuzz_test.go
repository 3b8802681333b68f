package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The fuzzers of this file feed the store what a disk can hold: any
// metadata record, and a stored checkpoint edited in any way. Nothing may
// panic or allocate on the metadata's word; what verifies is exactly what
// was saved; what does not is reported as corrupt and never loaded.

// FuzzCheckpointMeta decodes arbitrary metadata records.
func FuzzCheckpointMeta(f *testing.F) {
	info := describe(Meta{Step: 120, Epoch: 2, StepInEpoch: 3, Generation: 7, Time: time.Unix(1_700_000_000, 5).UTC(), ConfigHash: "abc"},
		bytes.Repeat([]byte{1}, 3000), 1024)
	rec, err := encodeInfo(info)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint64(120), rec)
	f.Add(uint64(121), rec)
	zeros := hex.EncodeToString(make([]byte, 32))
	f.Add(uint64(0), []byte(`{"version":1,"size":0,"chunk_size":1,"chunks":0,"sha256":"`+zeros+`"}`))
	// A size so large that rounding it up to whole chunks overflowed.
	f.Add(uint64(0), []byte(`{"version":1,"size":9223372036854775807,"chunk_size":2,"chunks":-4611686018427387904,"sha256":"`+zeros+`"}`))
	f.Add(uint64(0), []byte(`{"version":1,"size":-1}`))
	f.Add(uint64(0), []byte(`null`))
	f.Fuzz(func(t *testing.T, step uint64, rec []byte) {
		info, ce := decodeInfo(step, rec)
		if ce != nil {
			if !errors.Is(ce, ErrCorrupt) || !errors.Is(ce, ErrBadMetadata) || ce.Step != step || info.Step != step {
				t.Fatalf("refused as %v (step %d, info step %d), want a bad-metadata CorruptError of step %d", ce, ce.Step, info.Step, step)
			}
			return
		}
		if info.Step != step || info.Size < 0 || info.ChunkSize <= 0 || info.Chunks < 0 {
			t.Fatalf("accepted %+v under step %d", info, step)
		}
		// The chunks hold the size exactly: (chunks-1)*chunkSize < size <= chunks*chunkSize.
		size, cs, n := big.NewInt(info.Size), big.NewInt(int64(info.ChunkSize)), big.NewInt(int64(info.Chunks))
		all := new(big.Int).Mul(n, cs)
		if all.Cmp(size) < 0 || new(big.Int).Sub(all, cs).Cmp(size) >= 0 && info.Size > 0 || info.Size == 0 && info.Chunks != 0 {
			t.Fatalf("accepted %d chunks of %d bytes for %d bytes", info.Chunks, info.ChunkSize, info.Size)
		}
		again, err := encodeInfo(info)
		if err != nil {
			// Only a time out of JSON's range cannot be written back.
			if info.Time.Year() >= 0 && info.Time.Year() <= 9999 {
				t.Fatalf("re-encoding %+v: %v", info, err)
			}
			return
		}
		back, ce := decodeInfo(step, again)
		if ce != nil {
			t.Fatalf("a record written from accepted metadata is refused: %v", ce)
		}
		if !back.Time.Equal(info.Time) {
			t.Fatalf("time %v read back as %v", info.Time, back.Time)
		}
		back.Time = info.Time
		if back != info {
			t.Fatalf("metadata %+v read back as %+v", info, back)
		}
	})
}

// recordEdit is one change the fuzzer makes to a stored checkpoint, read
// from its bytes: an operation and its arguments.
type recordEdit struct {
	op   byte
	i    int // a chunk index
	n    int // an offset, a length
	mask byte
}

// editsOf reads edits, four bytes each.
func editsOf(b []byte) []recordEdit {
	var out []recordEdit
	for len(b) >= 4 {
		out = append(out, recordEdit{op: b[0] % 9, i: int(b[1] % 8), n: int(b[2]), mask: b[3]})
		b = b[4:]
	}
	return out
}

// layoutMeta is a metadata record that keeps the true sha256 and version
// but claims any size and chunk layout, the hardest lie for a reader.
func layoutMeta(info Info, size int64, chunkSize int, chunks int, derive bool) []byte {
	if derive && chunkSize > 0 && size >= 0 {
		chunks = chunkCount(size, chunkSize)
	}
	b, _ := json.Marshal(metaRecord{Version: recordVersion, Step: info.Step, Size: size, ChunkSize: chunkSize,
		Chunks: chunks, SHA256: hex.EncodeToString(info.SHA256[:])})
	return b
}

// apply carries out one edit on a checkpoint bucket.
func (e recordEdit) apply(cp *bolt.Bucket, info Info, raw []byte, size int64, chunkSize int) error {
	chunks := cp.Bucket(chunksBucket)
	switch e.op {
	case 0, 1: // flip bits of a chunk, or cut it short
		if chunks == nil {
			return nil
		}
		v := bytes.Clone(chunks.Get(chunkKey(e.i)))
		if len(v) == 0 {
			return nil
		}
		if e.op == 0 {
			v[e.n%len(v)] ^= e.mask
		} else {
			v = v[:e.n%len(v)]
		}
		return chunks.Put(chunkKey(e.i), v)
	case 2: // lose a chunk
		if chunks == nil {
			return nil
		}
		return chunks.Delete(chunkKey(e.i))
	case 3: // a value the layout does not name, under a key of any length
		if chunks == nil {
			return nil
		}
		key := bytes.Repeat([]byte{byte(e.i)}, 1+int(e.mask%6))
		return chunks.Put(key, bytes.Repeat([]byte{e.mask}, e.n))
	case 4: // any bytes as the metadata
		return cp.Put(metaKey, raw)
	case 5: // a metadata record claiming another layout
		return cp.Put(metaKey, layoutMeta(info, size, chunkSize, e.n, e.mask&1 == 0))
	case 6:
		return cp.Delete(metaKey)
	case 7:
		if chunks == nil {
			return nil
		}
		return cp.DeleteBucket(chunksBucket)
	default: // a nested bucket among the chunks
		if chunks == nil {
			return nil
		}
		_, err := chunks.CreateBucketIfNotExists(chunkKey(8 + e.i))
		return err
	}
}

// contents is everything stored under a checkpoint bucket, to tell whether
// the edits changed anything.
func contents(cp *bolt.Bucket) []byte {
	var out []byte
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		_ = b.ForEach(func(k, v []byte) error {
			out = binary.AppendUvarint(out, uint64(len(k)))
			out = append(out, k...)
			if v == nil {
				out = append(out, '{')
				walk(b.Bucket(k))
				out = append(out, '}')
				return nil
			}
			out = binary.AppendUvarint(out, uint64(len(v)))
			out = append(out, v...)
			return nil
		})
	}
	walk(cp)
	return out
}

// FuzzCheckpointRecord saves a checkpoint into a bbolt file, edits what is
// stored as a failing disk or a hostile file could, and loads it back.
func FuzzCheckpointRecord(f *testing.F) {
	ctx := context.Background()
	s, err := OpenBolt(filepath.Join(f.TempDir(), "fuzz.db"), BoltOptions{Keep: 1, InitialMmapSize: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	s.db.NoSync = true // what is tested is the decoding, not the disk

	f.Add(uint64(5), []byte("a blob of a few chunks, some bytes longer than one"), uint8(7), []byte{}, []byte{}, int64(0), int32(0))
	f.Add(uint64(5), []byte("a blob of a few chunks"), uint8(4), []byte{0, 1, 3, 0x20}, []byte{}, int64(0), int32(0))
	f.Add(uint64(6), []byte("a blob of a few chunks"), uint8(4), []byte{1, 5, 2, 0, 2, 0, 0, 0}, []byte{}, int64(0), int32(0))
	f.Add(uint64(7), []byte("a blob of a few chunks"), uint8(4), []byte{3, 1, 9, 1, 8, 2, 0, 0}, []byte{}, int64(0), int32(0))
	f.Add(uint64(8), []byte("a blob"), uint8(2), []byte{4, 0, 0, 0}, []byte(`{"version":1,"step":8}`), int64(0), int32(0))
	f.Add(uint64(9), []byte("a blob"), uint8(2), []byte{5, 0, 0, 0}, []byte{}, int64(1<<40), int32(1<<30))
	f.Add(uint64(9), []byte("a blob"), uint8(2), []byte{5, 0, 0, 0}, []byte{}, int64(math.MaxInt64), int32(1))
	f.Add(uint64(10), []byte{}, uint8(0), []byte{6, 0, 0, 0, 7, 0, 0, 0}, []byte{}, int64(0), int32(0))
	f.Fuzz(func(t *testing.T, step uint64, blob []byte, chunk uint8, edits, raw []byte, size int64, chunkSize int32) {
		if len(blob) > 1<<14 {
			blob = blob[:1<<14]
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(rootBucket); err != nil {
				return err
			}
			_, err := tx.CreateBucket(rootBucket)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.opts.ChunkSize = 1 + int(chunk)%64
		meta := Meta{Step: step, Epoch: 1, StepInEpoch: 2, Generation: 3, Time: time.Unix(1_700_000_000, 0).UTC(), ConfigHash: "h"}
		saved, err := s.Save(ctx, meta, blob)
		if err != nil {
			t.Fatalf("saving: %v", err)
		}
		var before, after []byte
		err = s.db.Update(func(tx *bolt.Tx) error {
			cp := tx.Bucket(rootBucket).Bucket(stepKey(step))
			before = contents(cp)
			for _, e := range editsOf(edits) {
				// An edit bbolt refuses (a value where a bucket is, say)
				// changes nothing and is skipped.
				_ = e.apply(cp, saved, raw, size, int(chunkSize))
			}
			after = contents(cp)
			return nil
		})
		if err != nil {
			t.Fatalf("editing: %v", err)
		}
		intact := bytes.Equal(before, after)

		got, loadErr := s.Load(ctx, step)
		switch {
		case loadErr != nil && intact:
			t.Fatalf("an intact checkpoint does not load: %v", loadErr)
		case loadErr != nil && !errors.Is(loadErr, ErrCorrupt):
			t.Fatalf("a damaged checkpoint is refused with %v, not as corrupt", loadErr)
		case loadErr == nil:
			if !bytes.Equal(got.Blob, blob) || got.SHA256 != sha256.Sum256(blob) || got.Size != int64(len(blob)) || got.Step != step {
				t.Fatalf("loaded %d bytes (info %+v), saved %d: a damaged checkpoint was loaded", len(got.Blob), got.Info, len(blob))
			}
		}
		newest, report, err := s.LoadNewestValid(ctx)
		switch {
		case loadErr == nil && (err != nil || !bytes.Equal(newest.Blob, blob) || len(report) != 0):
			t.Fatalf("Load verifies the checkpoint, LoadNewestValid says %v with report %v", err, report)
		case loadErr != nil && (!errors.Is(err, ErrNoCheckpoint) || len(report) != 1 || report[0].Step != step):
			t.Fatalf("the only checkpoint is corrupt (%v), LoadNewestValid says %v with report %v", loadErr, err, report)
		}
		list, err := s.List(ctx)
		if err != nil {
			t.Fatalf("listing: %v", err)
		}
		if len(list) != 1 || list[0].Verified() != (loadErr == nil) || list[0].Info.Step != step {
			t.Fatalf("listing %+v; loading said %v", list, loadErr)
		}
	})
}
