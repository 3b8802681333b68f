package checkpoint

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// gatedStore blocks every Save until the test releases it (or the save's
// context ends), and announces each Save as it starts.
type gatedStore struct {
	Store
	started chan uint64
	release chan struct{}
}

func newGatedStore(t *testing.T) *gatedStore {
	s := NewMemory(MemoryOptions{ChunkSize: testChunk, Keep: 10})
	t.Cleanup(func() { _ = s.Close() })
	return &gatedStore{Store: s, started: make(chan uint64, 10), release: make(chan struct{})}
}

func (g *gatedStore) Save(ctx context.Context, meta Meta, blob []byte) (Info, error) {
	g.started <- meta.Step
	select {
	case <-g.release:
	case <-ctx.Done():
		return Info{}, ctx.Err()
	}
	return g.Store.Save(ctx, meta, blob)
}

// results collects a Writer's reports.
type results struct {
	mu  sync.Mutex
	got []Result
}

func (r *results) add(res Result) { r.mu.Lock(); r.got = append(r.got, res); r.mu.Unlock() }

func (r *results) all() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Result(nil), r.got...)
}

func newWriter(t *testing.T, s Store) (*Writer, *results) {
	t.Helper()
	res := &results{}
	w := NewWriter(s, WriterOptions{OnResult: res.add, Logger: testLogger(t)})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Close(ctx)
	})
	return w, res
}

func waitStarted(t *testing.T, g *gatedStore, step uint64) {
	t.Helper()
	select {
	case s := <-g.started:
		if s != step {
			t.Fatalf("save of step %d started, want %d", s, step)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("save of step %d never started", step)
	}
}

func TestWriterCoalescesAndCloseWaits(t *testing.T) {
	g := newGatedStore(t)
	w, res := newWriter(t, g)

	if err := w.Submit(metaFor(1), blobFor(1, 100)); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, g, 1)
	// While step 1 is being written, 2 and 3 arrive: 3 replaces 2, and 4
	// replaces 3. Submit must not block although the store is stuck.
	for step := uint64(2); step <= 4; step++ {
		if err := w.Submit(metaFor(step), blobFor(step, 100)); err != nil {
			t.Fatal(err)
		}
	}

	closed := make(chan error, 1)
	go func() { closed <- w.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a write was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := w.Submit(metaFor(5), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit after Close: %v, want ErrClosed", err)
	}

	close(g.release) // lets step 1 and then the pending step 4 through
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}

	got := map[uint64]error{}
	for _, r := range res.all() {
		got[r.Meta.Step] = r.Err
		if r.Err == nil && (r.Duration <= 0 || r.Info.Size != 100) {
			t.Errorf("step %d result %+v lacks duration or size", r.Meta.Step, r)
		}
	}
	want := map[uint64]error{1: nil, 2: ErrSuperseded, 3: ErrSuperseded, 4: nil}
	if len(got) != len(want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	for step, err := range want {
		if !errors.Is(got[step], err) {
			t.Errorf("step %d: %v, want %v", step, got[step], err)
		}
	}
	if steps, _ := listedSteps(t, g.Store); !equal(steps, []uint64{1, 4}) {
		t.Errorf("stored steps %v, want [1 4]", steps)
	}
}

func TestWriterCloseTimeoutAbortsWrite(t *testing.T) {
	g := newGatedStore(t)
	w, res := newWriter(t, g)
	if err := w.Submit(metaFor(1), blobFor(1, 100)); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, g, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want deadline exceeded", err)
	}
	// Close has waited for the goroutine, so the result is in.
	r := res.all()
	if len(r) != 1 || !errors.Is(r[0].Err, context.Canceled) {
		t.Fatalf("results %+v, want step 1 cancelled", r)
	}
}

func TestWriterWritesToBolt(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "ckpt.db"), BoltOptions{})
	w, res := newWriter(t, s)
	for step := uint64(1); step <= 3; step++ {
		if err := w.Submit(metaFor(step), blobFor(step, 3*testChunk)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Whatever was coalesced, the last submission is always written.
	cp, _, err := s.LoadNewestValid(context.Background())
	if err != nil || cp.Step != 3 {
		t.Fatalf("newest after Close: %v, %v", cp, err)
	}
	if n := len(res.all()); n != 3 {
		t.Errorf("%d results, want one per submission", n)
	}
}
