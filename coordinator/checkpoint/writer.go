package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrSuperseded is the Result.Err of a submission replaced by a newer one
// before its write began.
var ErrSuperseded = errors.New("checkpoint superseded by a newer one before it was written")

// Result reports what became of one Writer submission.
type Result struct {
	Meta     Meta          // as submitted
	Info     Info          // as stored, when Err is nil
	Err      error         // nil, ErrSuperseded, ErrClosed or the save's error
	Waited   time.Duration // from Submit until the write began
	Duration time.Duration // spent in Store.Save; 0 if it never started
}

// WriterOptions configures NewWriter.
type WriterOptions struct {
	// OnResult is called from the writer's goroutine once per submission,
	// in the order the outcomes are known. A slow callback delays the next
	// write, never the submitter.
	OnResult func(Result)
	// Logger receives one line per outcome. nil means slog.Default().
	Logger *slog.Logger
}

// Writer saves checkpoints to a Store on its own goroutine, so the
// training path only hands a blob over. It holds at most one pending
// checkpoint besides the one being written: a newer submission replaces the
// pending one, since only the newest state matters.
type Writer struct {
	store    Store
	onResult func(Result)
	log      *slog.Logger

	ctx    context.Context // cancelled when Close gives up waiting
	cancel context.CancelFunc
	wake   chan struct{}
	done   chan struct{}

	mu         sync.Mutex
	pending    *job
	superseded []*job
	closed     bool
}

type job struct {
	meta      Meta
	blob      []byte
	submitted time.Time
}

// NewWriter starts a Writer on store. Close it to stop its goroutine; the
// Writer does not close the store.
func NewWriter(store Store, opts WriterOptions) *Writer {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{
		store:    store,
		onResult: opts.OnResult,
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	go w.run()
	return w
}

// Submit queues a checkpoint and returns at once. The Writer owns blob from
// now on: the caller must not modify it (hand over a copy of live state).
// It fails only with ErrClosed.
func (w *Writer) Submit(meta Meta, blob []byte) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return fmt.Errorf("submitting checkpoint at step %d: %w", meta.Step, ErrClosed)
	}
	if w.pending != nil {
		w.superseded = append(w.superseded, w.pending)
	}
	w.pending = &job{meta: meta, blob: blob, submitted: time.Now()}
	w.mu.Unlock()
	w.signal()
	return nil
}

func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default: // already signalled
	}
}

// Close stops accepting submissions and waits until the write in flight and
// the pending one (if any) are done. If ctx ends first, the write in flight
// is aborted (and rolled back) at its next chunk, and Close returns ctx's
// error once the goroutine has stopped.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.signal()
	select { // already stopped (a second Close): succeed even if ctx has ended
	case <-w.done:
		w.cancel()
		return nil
	default:
	}
	select {
	case <-w.done:
		w.cancel()
		return nil
	case <-ctx.Done():
		w.cancel()
		<-w.done
		return fmt.Errorf("closing checkpoint writer: %w", ctx.Err())
	}
}

func (w *Writer) run() {
	defer close(w.done)
	for {
		w.mu.Lock()
		next, superseded, closed := w.pending, w.superseded, w.closed
		w.pending, w.superseded = nil, nil
		w.mu.Unlock()

		for _, j := range superseded {
			w.report(Result{Meta: j.meta, Err: ErrSuperseded, Waited: time.Since(j.submitted)})
		}
		if next != nil {
			w.write(next)
			continue
		}
		if closed {
			return
		}
		<-w.wake
	}
}

func (w *Writer) write(j *job) {
	start := time.Now()
	r := Result{Meta: j.meta, Waited: start.Sub(j.submitted)}
	r.Info, r.Err = w.store.Save(w.ctx, j.meta, j.blob)
	r.Duration = time.Since(start)
	w.report(r)
}

func (w *Writer) report(r Result) {
	switch {
	case r.Err == nil:
		mbps := float64(r.Info.Size) / 1e6 / max(r.Duration.Seconds(), 1e-9)
		w.log.Debug("checkpoint saved", "step", r.Meta.Step, "bytes", r.Info.Size,
			"duration", r.Duration, "MB/s", fmt.Sprintf("%.0f", mbps), "waited", r.Waited)
	case errors.Is(r.Err, ErrSuperseded):
		w.log.Debug("checkpoint superseded before writing", "step", r.Meta.Step)
	default:
		w.log.Warn("checkpoint save failed", "step", r.Meta.Step, "err", r.Err, "duration", r.Duration)
	}
	if w.onResult != nil {
		w.onResult(r)
	}
}
