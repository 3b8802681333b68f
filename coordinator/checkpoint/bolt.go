package checkpoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket layout, version 1:
//
//	checkpoints/                 root bucket
//	  <step: 8 bytes BE>/        one nested bucket per checkpoint
//	    meta = JSON metaRecord
//	    chunks/
//	      <index: 4 bytes BE> = chunk bytes
var (
	rootBucket   = []byte("checkpoints")
	metaKey      = []byte("meta")
	chunksBucket = []byte("chunks")
)

// DefaultLockTimeout is how long OpenBolt waits for the file lock.
const DefaultLockTimeout = time.Second

// DefaultInitialMmapSize fits Keep=3 checkpoints of the real ~230 MB state
// plus the one being written.
const DefaultInitialMmapSize = 1 << 30

// BoltOptions configures OpenBolt. The zero value gives the defaults.
type BoltOptions struct {
	// Keep is how many checkpoints to retain (newest by step). 0 means
	// DefaultKeep. More costs disk (each is the full state); fewer leaves
	// less to fall back on if the newest is corrupt.
	Keep int
	// ChunkSize is the size of the values the blob is split into. 0 means
	// DefaultChunkSize. Changing it affects only checkpoints written later.
	ChunkSize int
	// LockTimeout bounds the wait for the file lock; past it OpenBolt fails
	// with ErrLocked. 0 means DefaultLockTimeout.
	LockTimeout time.Duration
	// ReadOnly opens the file with a shared lock for inspection (e.g. a CLI
	// listing checkpoints). Save then fails with ErrReadOnly. A read-only
	// open still fails with ErrLocked while a writer holds the file.
	ReadOnly bool
	// Injector, if set, is consulted with OpPutChunk before each chunk is
	// written and with OpCommit before the transaction commits; an error
	// aborts the save. For tests.
	Injector Injector
	// InitialMmapSize reserves address space for the file up front. When
	// the file outgrows its mapping, bbolt remaps it and first copies every
	// value of the open write transaction to the heap: for a 230 MB state
	// that is 2.5x the blob in allocations per save and ~25% less
	// throughput. About (Keep+2) x the state size avoids it. It is address
	// space only, costing neither memory nor disk. 0 means
	// DefaultInitialMmapSize; negative means grow in steps from the start.
	InitialMmapSize int
	// Logger receives pruning and recovery notes. nil means slog.Default().
	Logger *slog.Logger
}

func (o BoltOptions) withDefaults() BoltOptions {
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.InitialMmapSize == 0 {
		o.InitialMmapSize = DefaultInitialMmapSize
	}
	if o.InitialMmapSize < 0 {
		o.InitialMmapSize = 0
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Bolt is a Store in a single bbolt file.
type Bolt struct {
	db   *bolt.DB
	path string
	opts BoltOptions
	log  *slog.Logger
}

var _ Store = (*Bolt)(nil)

// lockedError is returned when another process holds the file.
type lockedError struct {
	path   string
	waited time.Duration
}

func (e *lockedError) Error() string {
	return fmt.Sprintf("checkpoint file %s is locked by another process (gave up after %v)", e.path, e.waited)
}

func (e *lockedError) Is(target error) bool { return target == ErrLocked }

// OpenBolt opens (creating it unless read-only) the checkpoint file at path.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	opts = opts.withDefaults()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  opts.LockTimeout,
		ReadOnly: opts.ReadOnly,
		// The map freelist stays fast when a large file has many free pages,
		// which is the steady state once old checkpoints are pruned.
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: opts.InitialMmapSize,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, &lockedError{path: path, waited: opts.LockTimeout}
	}
	if err != nil {
		return nil, fmt.Errorf("opening checkpoint file %s: %w", path, err)
	}
	if !opts.ReadOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(rootBucket)
			return err
		})
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("initialising checkpoint file %s: %w", path, err)
		}
	}
	return &Bolt{db: db, path: path, opts: opts, log: opts.Logger.With("checkpoints", path)}, nil
}

// Path is the file the store uses.
func (b *Bolt) Path() string { return b.path }

func (b *Bolt) inject(op Op) error {
	if b.opts.Injector == nil {
		return nil
	}
	return b.opts.Injector.MaybeError(op)
}

// Save implements Store. Cancelling ctx aborts the write between chunks and
// rolls it back; once the commit starts it completes.
func (b *Bolt) Save(ctx context.Context, meta Meta, blob []byte) (Info, error) {
	if b.opts.ReadOnly {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, ErrReadOnly)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, err)
	}
	info := describe(meta, blob, b.opts.ChunkSize)
	rec, err := encodeInfo(info)
	if err != nil {
		return Info{}, err
	}
	var pruned []uint64
	err = b.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(rootBucket)
		key := stepKey(meta.Step)
		if root.Bucket(key) != nil {
			if err := root.DeleteBucket(key); err != nil {
				return fmt.Errorf("replacing existing checkpoint: %w", err)
			}
		}
		cp, err := root.CreateBucket(key)
		if err != nil {
			return err
		}
		if err := cp.Put(metaKey, rec); err != nil {
			return err
		}
		chunks, err := cp.CreateBucket(chunksBucket)
		if err != nil {
			return err
		}
		chunks.FillPercent = 1 // keys only ever append
		for i := range info.Chunks {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := b.inject(Op{Kind: OpPutChunk, Step: meta.Step, Chunk: i}); err != nil {
				return err
			}
			// bbolt keeps a reference to the value until commit; the caller
			// promised not to touch blob until Save returns.
			if err := chunks.Put(chunkKey(i), chunkOf(info, blob, i)); err != nil {
				return fmt.Errorf("chunk %d: %w", i, err)
			}
		}
		if pruned, err = prune(root, b.opts.Keep); err != nil {
			return err
		}
		return b.inject(Op{Kind: OpCommit, Step: meta.Step})
	})
	if err != nil {
		return Info{}, fmt.Errorf("saving checkpoint at step %d: %w", meta.Step, b.closedErr(err))
	}
	for _, s := range pruned {
		if s == meta.Step {
			b.log.Warn("checkpoint pruned at once: newer ones fill the retention", "step", s, "keep", b.opts.Keep)
		} else {
			b.log.Debug("pruned old checkpoint", "step", s)
		}
	}
	return info, nil
}

// prune deletes all but the newest keep checkpoints and returns their steps.
func prune(root *bolt.Bucket, keep int) ([]uint64, error) {
	var keys [][]byte
	c := root.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil { // nested bucket: a checkpoint
			keys = append(keys, bytes.Clone(k))
		}
	}
	if len(keys) <= keep {
		return nil, nil
	}
	var steps []uint64
	for _, k := range keys[:len(keys)-keep] {
		if err := root.DeleteBucket(k); err != nil {
			return nil, fmt.Errorf("pruning: %w", err)
		}
		steps = append(steps, keyStep(k))
	}
	return steps, nil
}

func keyStep(k []byte) uint64 {
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}

// List implements Store.
func (b *Bolt) List(ctx context.Context) ([]Listing, error) {
	var out []Listing
	err := b.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(rootBucket)
		if root == nil { // read-only open of a fresh file
			return nil
		}
		c := root.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			info, problem := readCheckpoint(root.Bucket(k), keyStep(k))
			l := Listing{Info: info}
			if problem != nil {
				l.Problem = problem
			}
			out = append(out, l)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints in %s: %w", b.path, b.closedErr(err))
	}
	return out, nil
}

// Load implements Store.
func (b *Bolt) Load(ctx context.Context, step uint64) (*Checkpoint, error) {
	var cp *Checkpoint
	err := b.db.View(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		root := tx.Bucket(rootBucket)
		if root == nil {
			return ErrNotFound
		}
		bucket := root.Bucket(stepKey(step))
		if bucket == nil {
			return ErrNotFound
		}
		var err error
		cp, err = loadBucket(bucket, step, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("loading checkpoint at step %d: %w", step, b.closedErr(err))
	}
	return cp, nil
}

// LoadNewestValid implements Store.
func (b *Bolt) LoadNewestValid(ctx context.Context) (*Checkpoint, []*CorruptError, error) {
	var (
		cp     *Checkpoint
		report []*CorruptError
	)
	err := b.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(rootBucket)
		if root == nil {
			return nil
		}
		var buf []byte
		c := root.Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			if v != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			step := keyStep(k)
			loaded, err := loadBucket(root.Bucket(k), step, buf)
			var ce *CorruptError
			if errors.As(err, &ce) {
				b.log.Warn("skipping corrupt checkpoint", "step", step, "err", ce)
				report = append(report, ce)
				continue
			}
			if err != nil {
				return err
			}
			cp = loaded
			return nil
		}
		return nil
	})
	if err != nil {
		return nil, report, fmt.Errorf("loading newest checkpoint from %s: %w", b.path, b.closedErr(err))
	}
	if cp == nil {
		return nil, report, fmt.Errorf("loading newest checkpoint from %s: %w", b.path, ErrNoCheckpoint)
	}
	return cp, report, nil
}

// loadBucket verifies a checkpoint and copies its blob out of the
// transaction, reusing buf when it is large enough. The blob is allocated
// only once the stored chunks are known to add up to the recorded size.
func loadBucket(bucket *bolt.Bucket, step uint64, buf []byte) (*Checkpoint, error) {
	info, ce := decodeInfo(step, bucket.Get(metaKey))
	if ce != nil {
		return nil, ce
	}
	chunks := readChunks(bucket)
	if ce := checkLayout(info, chunks.get, chunks.stored); ce != nil {
		return nil, ce
	}
	if int64(cap(buf)) >= info.Size {
		buf = buf[:info.Size]
	} else {
		buf = make([]byte, info.Size)
	}
	if ce := assemble(info, chunks.get, chunks.stored, buf); ce != nil {
		return nil, ce
	}
	return &Checkpoint{Info: info, Blob: buf}, nil
}

// storedChunks are the chunk values of one checkpoint bucket.
type storedChunks struct {
	values map[int][]byte
	stored int // every key of the chunks bucket, well-formed or not
}

func (c storedChunks) get(i int) []byte { return c.values[i] }

func readChunks(bucket *bolt.Bucket) storedChunks {
	c := storedChunks{values: map[int][]byte{}}
	if chunks := bucket.Bucket(chunksBucket); chunks != nil {
		cur := chunks.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			c.stored++
			if len(k) == 4 && v != nil {
				c.values[int(binary.BigEndian.Uint32(k))] = v
			}
		}
	}
	return c
}

// readCheckpoint decodes and verifies one checkpoint bucket without
// copying its blob.
func readCheckpoint(bucket *bolt.Bucket, step uint64) (Info, *CorruptError) {
	info, ce := decodeInfo(step, bucket.Get(metaKey))
	if ce != nil {
		return info, ce
	}
	chunks := readChunks(bucket)
	return info, assemble(info, chunks.get, chunks.stored, nil)
}

// Close implements Store.
func (b *Bolt) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("closing checkpoint file %s: %w", b.path, err)
	}
	return nil
}

func (b *Bolt) closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
