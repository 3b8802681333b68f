package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors callers branch on.
var (
	// ErrNoCheckpoint means there is no checkpoint that verifies.
	ErrNoCheckpoint = errors.New("no valid checkpoint")
	// ErrNotFound means no checkpoint exists at the requested step.
	ErrNotFound = errors.New("checkpoint not found")
	// ErrLocked means another process holds the checkpoint file open.
	ErrLocked = errors.New("checkpoint file is locked by another process")
	// ErrReadOnly means the store was opened read-only and cannot save.
	ErrReadOnly = errors.New("checkpoint store is read-only")
	// ErrClosed means the store or writer has been closed.
	ErrClosed = errors.New("checkpoint store is closed")

	// ErrCorrupt is matched by every verification failure.
	ErrCorrupt = errors.New("checkpoint is corrupt")
	// ErrChecksumMismatch: the SHA-256 over the chunks differs from the record.
	ErrChecksumMismatch = errors.New("sha256 mismatch")
	// ErrMissingChunk: a chunk named by the metadata is absent.
	ErrMissingChunk = errors.New("missing chunk")
	// ErrChunkSize: a chunk is shorter or longer than the layout says, or
	// there are chunks the metadata does not name.
	ErrChunkSize = errors.New("chunk has the wrong size")
	// ErrBadMetadata: the metadata record is absent, unreadable, of an
	// unknown version or inconsistent with where it is stored.
	ErrBadMetadata = errors.New("bad metadata")
)

// Store keeps checkpoints. Implementations are safe for concurrent use.
type Store interface {
	// Save writes a checkpoint atomically and prunes the store to its
	// newest Keep checkpoints. A checkpoint already stored at the same step
	// is replaced. The blob must not be modified until Save returns.
	Save(ctx context.Context, meta Meta, blob []byte) (Info, error)
	// List describes every stored checkpoint, oldest first, and verifies
	// each one (which reads all of its chunks).
	List(ctx context.Context) ([]Listing, error)
	// Load returns the checkpoint at step after verifying it. It fails with
	// ErrNotFound or a *CorruptError.
	Load(ctx context.Context, step uint64) (*Checkpoint, error)
	// LoadNewestValid returns the newest checkpoint that verifies, and the
	// newer ones that did not, newest first. When none verifies it returns
	// the report and ErrNoCheckpoint.
	LoadNewestValid(ctx context.Context) (*Checkpoint, []*CorruptError, error)
	// Close releases the store. Calls after Close fail with ErrClosed.
	Close() error
}

// Meta is what the caller says about a checkpoint.
type Meta struct {
	Step        uint64    // global optimiser steps taken; the checkpoint's key
	Epoch       uint64    // epoch the next step belongs to
	StepInEpoch uint64    // position of the next step within Epoch
	Generation  uint64    // membership generation when the step committed
	Time        time.Time // when the state was captured
	ConfigHash  string    // identifies the training configuration
}

// Info is a stored checkpoint's metadata record: the caller's Meta plus what
// the store recorded about the blob.
type Info struct {
	Meta
	Size      int64    // blob length in bytes
	ChunkSize int      // length of every chunk but the last
	Chunks    int      // number of chunks
	SHA256    [32]byte // over the whole blob
}

// Checkpoint is a verified checkpoint with its state.
type Checkpoint struct {
	Info
	Blob []byte
}

// Listing is one entry of Store.List.
type Listing struct {
	// Info is the metadata record; when the record itself is unreadable
	// only Info.Step is set.
	Info Info
	// Problem is nil when the checkpoint verifies, else a *CorruptError.
	Problem error
}

// Verified reports whether the checkpoint passed verification.
func (l Listing) Verified() bool { return l.Problem == nil }

// CorruptError says why the checkpoint at Step failed verification. It
// matches ErrCorrupt and Kind under errors.Is.
type CorruptError struct {
	Step   uint64
	Kind   error  // ErrChecksumMismatch, ErrMissingChunk, ErrChunkSize or ErrBadMetadata
	Detail string // specifics, e.g. which chunk
}

func (e *CorruptError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("checkpoint at step %d is corrupt (%v)", e.Step, e.Kind)
	}
	return fmt.Sprintf("checkpoint at step %d is corrupt (%v: %s)", e.Step, e.Kind, e.Detail)
}

// Unwrap lets errors.Is match both ErrCorrupt and the kind.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Kind} }

func corrupt(step uint64, kind error, format string, args ...any) *CorruptError {
	return &CorruptError{Step: step, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}
