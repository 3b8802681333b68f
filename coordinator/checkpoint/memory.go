package checkpoint

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// MemoryOptions configures NewMemory; zero values give the defaults.
type MemoryOptions struct {
	Keep      int // checkpoints retained; 0 means DefaultKeep
	ChunkSize int // 0 means DefaultChunkSize
}

// Memory is a Store held in memory, for tests of other packages. It verifies
// exactly as Bolt does, and FlipByte and DropChunk damage a stored checkpoint
// so that recovery paths can be exercised.
type Memory struct {
	keep, chunkSize int

	mu     sync.Mutex
	closed bool
	cps    map[uint64]*memCheckpoint
}

type memCheckpoint struct {
	info   Info
	chunks [][]byte // nil entries are missing chunks
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory Store.
func NewMemory(opts MemoryOptions) *Memory {
	if opts.Keep <= 0 {
		opts.Keep = DefaultKeep
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	return &Memory{keep: opts.Keep, chunkSize: opts.ChunkSize, cps: map[uint64]*memCheckpoint{}}
}

// Save implements Store; it copies blob.
func (m *Memory) Save(ctx context.Context, meta Meta, blob []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, err)
	}
	info := describe(meta, blob, m.chunkSize)
	cp := &memCheckpoint{info: info, chunks: make([][]byte, info.Chunks)}
	for i := range cp.chunks {
		cp.chunks[i] = slices.Clone(chunkOf(info, blob, i))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, ErrClosed)
	}
	m.cps[meta.Step] = cp
	steps := m.stepsLocked()
	for _, s := range steps[:max(0, len(steps)-m.keep)] {
		delete(m.cps, s)
	}
	return info, nil
}

func (m *Memory) stepsLocked() []uint64 {
	steps := make([]uint64, 0, len(m.cps))
	for s := range m.cps {
		steps = append(steps, s)
	}
	slices.Sort(steps)
	return steps
}

func (cp *memCheckpoint) verify(dst []byte) *CorruptError {
	get := func(i int) []byte {
		if i < len(cp.chunks) {
			return cp.chunks[i]
		}
		return nil
	}
	stored := 0
	for _, c := range cp.chunks {
		if c != nil {
			stored++
		}
	}
	return assemble(cp.info, get, stored, dst)
}

// List implements Store.
func (m *Memory) List(ctx context.Context) ([]Listing, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("listing checkpoints: %w", ErrClosed)
	}
	var out []Listing
	for _, s := range m.stepsLocked() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("listing checkpoints: %w", err)
		}
		cp := m.cps[s]
		l := Listing{Info: cp.info}
		if ce := cp.verify(nil); ce != nil {
			l.Problem = ce
		}
		out = append(out, l)
	}
	return out, nil
}

func (m *Memory) loadLocked(step uint64) (*Checkpoint, error) {
	cp, ok := m.cps[step]
	if !ok {
		return nil, ErrNotFound
	}
	blob := make([]byte, cp.info.Size)
	if ce := cp.verify(blob); ce != nil {
		return nil, ce
	}
	return &Checkpoint{Info: cp.info, Blob: blob}, nil
}

// Load implements Store.
func (m *Memory) Load(ctx context.Context, step uint64) (*Checkpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("loading checkpoint at step %d: %w", step, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("loading checkpoint at step %d: %w", step, err)
	}
	cp, err := m.loadLocked(step)
	if err != nil {
		return nil, fmt.Errorf("loading checkpoint at step %d: %w", step, err)
	}
	return cp, nil
}

// LoadNewestValid implements Store.
func (m *Memory) LoadNewestValid(ctx context.Context) (*Checkpoint, []*CorruptError, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, fmt.Errorf("loading newest checkpoint: %w", ErrClosed)
	}
	var report []*CorruptError
	steps := m.stepsLocked()
	for i := len(steps) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, report, fmt.Errorf("loading newest checkpoint: %w", err)
		}
		cp, err := m.loadLocked(steps[i])
		if err == nil {
			return cp, report, nil
		}
		report = append(report, err.(*CorruptError))
	}
	return nil, report, fmt.Errorf("loading newest checkpoint: %w", ErrNoCheckpoint)
}

// FlipByte inverts the bits of the blob byte at offset in the checkpoint at
// step, as a disk error would.
func (m *Memory) FlipByte(step uint64, offset int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp, ok := m.cps[step]
	if !ok {
		return fmt.Errorf("flipping a byte of step %d: %w", step, ErrNotFound)
	}
	if offset < 0 || offset >= cp.info.Size {
		return fmt.Errorf("flipping byte %d of step %d: beyond the %d-byte blob", offset, step, cp.info.Size)
	}
	c := cp.chunks[offset/int64(cp.info.ChunkSize)]
	if c == nil {
		return fmt.Errorf("flipping byte %d of step %d: its chunk is missing", offset, step)
	}
	c[offset%int64(cp.info.ChunkSize)] ^= 0xff
	return nil
}

// DropChunk removes one chunk of the checkpoint at step.
func (m *Memory) DropChunk(step uint64, chunk int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp, ok := m.cps[step]
	if !ok {
		return fmt.Errorf("dropping a chunk of step %d: %w", step, ErrNotFound)
	}
	if chunk < 0 || chunk >= len(cp.chunks) {
		return fmt.Errorf("dropping chunk %d of step %d: it has %d chunks", chunk, step, len(cp.chunks))
	}
	cp.chunks[chunk] = nil
	return nil
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
