package checkpoint

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// recordVersion is the metadata format written by this package. Readers
// refuse other versions as ErrBadMetadata rather than guess.
const recordVersion = 1

// DefaultChunkSize is the size of each stored piece of a blob: big enough that
// a 230 MB state is ~60 values, small enough to keep any one allocation modest.
const DefaultChunkSize = 4 << 20

// DefaultKeep is how many checkpoints a store retains.
const DefaultKeep = 3

// metaRecord is the stored form of Info, version 1.
type metaRecord struct {
	Version     int       `json:"version"`
	Step        uint64    `json:"step"`
	Epoch       uint64    `json:"epoch"`
	StepInEpoch uint64    `json:"step_in_epoch"`
	Generation  uint64    `json:"generation"`
	Time        time.Time `json:"time"`
	ConfigHash  string    `json:"config_hash"`
	Size        int64     `json:"size"`
	ChunkSize   int       `json:"chunk_size"`
	Chunks      int       `json:"chunks"`
	SHA256      string    `json:"sha256"`
}

func encodeInfo(info Info) ([]byte, error) {
	b, err := json.Marshal(metaRecord{
		Version:     recordVersion,
		Step:        info.Step,
		Epoch:       info.Epoch,
		StepInEpoch: info.StepInEpoch,
		Generation:  info.Generation,
		Time:        info.Time.UTC(),
		ConfigHash:  info.ConfigHash,
		Size:        info.Size,
		ChunkSize:   info.ChunkSize,
		Chunks:      info.Chunks,
		SHA256:      hex.EncodeToString(info.SHA256[:]),
	})
	if err != nil {
		return nil, fmt.Errorf("encoding metadata of step %d: %w", info.Step, err)
	}
	return b, nil
}

// decodeInfo parses and checks a metadata record stored under step.
func decodeInfo(step uint64, b []byte) (Info, *CorruptError) {
	if b == nil {
		return Info{Meta: Meta{Step: step}}, corrupt(step, ErrBadMetadata, "no metadata record")
	}
	var r metaRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Info{Meta: Meta{Step: step}}, corrupt(step, ErrBadMetadata, "%v", err)
	}
	info := Info{
		Meta: Meta{
			Step: r.Step, Epoch: r.Epoch, StepInEpoch: r.StepInEpoch,
			Generation: r.Generation, Time: r.Time, ConfigHash: r.ConfigHash,
		},
		Size: r.Size, ChunkSize: r.ChunkSize, Chunks: r.Chunks,
	}
	bad := func(format string, args ...any) (Info, *CorruptError) {
		info.Step = step
		return info, corrupt(step, ErrBadMetadata, format, args...)
	}
	switch {
	case r.Version != recordVersion:
		return bad("record version %d, this build reads %d", r.Version, recordVersion)
	case r.Step != step:
		return bad("record says step %d but is stored under step %d", r.Step, step)
	case r.Size < 0 || r.ChunkSize <= 0:
		return bad("size %d with chunk size %d", r.Size, r.ChunkSize)
	case r.Chunks != chunkCount(r.Size, r.ChunkSize):
		return bad("%d chunks recorded, size %d needs %d", r.Chunks, r.Size, chunkCount(r.Size, r.ChunkSize))
	}
	sum, err := hex.DecodeString(r.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return bad("sha256 field %q is not 32 hex bytes", r.SHA256)
	}
	copy(info.SHA256[:], sum)
	return info, nil
}

// describe computes the Info a blob will be stored under.
func describe(meta Meta, blob []byte, chunkSize int) Info {
	return Info{
		Meta:      meta,
		Size:      int64(len(blob)),
		ChunkSize: chunkSize,
		Chunks:    chunkCount(int64(len(blob)), chunkSize),
		SHA256:    sha256.Sum256(blob),
	}
}

// chunkCount is how many chunks of chunkSize (> 0) hold size bytes. It is
// written so that no size, however large, overflows.
func chunkCount(size int64, chunkSize int) int {
	n := size / int64(chunkSize)
	if size%int64(chunkSize) != 0 {
		n++
	}
	return int(n)
}

// chunkOf returns chunk i of blob under the layout of info.
func chunkOf(info Info, blob []byte, i int) []byte {
	lo := int64(i) * int64(info.ChunkSize)
	hi := min(lo+int64(info.ChunkSize), info.Size)
	return blob[lo:hi]
}

// checkLayout checks the chunk count and every chunk's size against info,
// reading chunk i through get (nil when absent); storedChunks is how many
// chunk values exist, to catch extras. It reads no chunk's contents, so it
// is cheap, and it runs before a blob of info.Size bytes is allocated: the
// metadata alone could claim any size.
func checkLayout(info Info, get func(i int) []byte, storedChunks int) *CorruptError {
	for i := range info.Chunks {
		c := get(i)
		if c == nil {
			return corrupt(info.Step, ErrMissingChunk, "chunk %d of %d", i, info.Chunks)
		}
		want := int64(info.ChunkSize)
		if i == info.Chunks-1 {
			want = info.Size - int64(i)*int64(info.ChunkSize)
		}
		if int64(len(c)) != want {
			return corrupt(info.Step, ErrChunkSize, "chunk %d is %d bytes, want %d", i, len(c), want)
		}
	}
	if storedChunks != info.Chunks {
		return corrupt(info.Step, ErrChunkSize, "%d chunks stored, metadata says %d", storedChunks, info.Chunks)
	}
	return nil
}

// assemble verifies the chunks of a checkpoint against info (checkLayout,
// then the SHA-256). When dst is non-nil (len == info.Size) the chunks are
// copied into it as they are hashed.
func assemble(info Info, get func(i int) []byte, storedChunks int, dst []byte) *CorruptError {
	if ce := checkLayout(info, get, storedChunks); ce != nil {
		return ce
	}
	h := sha256.New()
	for i := range info.Chunks {
		c := get(i)
		h.Write(c)
		if dst != nil {
			copy(dst[int64(i)*int64(info.ChunkSize):], c)
		}
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if sum != info.SHA256 {
		return corrupt(info.Step, ErrChecksumMismatch, "")
	}
	return nil
}

// stepKey is the bucket key of a step: big-endian so byte order is step order.
func stepKey(step uint64) []byte { return binary.BigEndian.AppendUint64(nil, step) }

// chunkKey is the key of chunk i within a checkpoint.
func chunkKey(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }
