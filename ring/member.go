package ring

import (
	"context"
	"fmt"
	"sync"
)

// Member is one worker's place in the ring. It lives as long as the worker;
// each Configure starts a new generation (new streams, new ring order) and
// retires the previous one.
type Member struct {
	tr  RingTransport
	cfg Config

	mu     sync.Mutex
	wire   Wire // of the generations configured from now on
	cur    *generation
	closed bool
	wg     sync.WaitGroup // goroutines of every generation
}

// NewMember returns a member that talks through tr. It does nothing on the
// network until Configure and AllReduce.
func NewMember(tr RingTransport, cfg Config) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Member{tr: tr, cfg: cfg}, nil
}

// Configure makes gen the current generation: this member has the given
// rank in the ring order peers (peers[rank] is this member). Streams and
// collectives of the previous generation are broken (a running AllReduce of
// it returns ErrRingBroken wrapping ErrSuperseded) and its frames refused
// from then on. Configure does not wait for the other members: the streams
// of gen are opened by its first AllReduce. gen must grow.
func (m *Member) Configure(gen uint64, rank int, peers []Peer) error {
	if rank < 0 || rank >= len(peers) {
		return fmt.Errorf("configuring ring generation %d: rank %d out of range for %d peers", gen, rank, len(peers))
	}
	seen := make(map[string]bool, len(peers))
	for _, p := range peers {
		if p.ID == "" || seen[p.ID] {
			return fmt.Errorf("configuring ring generation %d: peer ids must be unique and not empty, got %q twice or empty", gen, p.ID)
		}
		seen[p.ID] = true
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("configuring ring generation %d: %w", gen, ErrClosed)
	}
	old := m.cur
	if old != nil && gen <= old.gen {
		m.mu.Unlock()
		return fmt.Errorf("configuring ring generation %d after %d: %w", gen, old.gen, ErrStaleGeneration)
	}
	m.cur = newGeneration(m, gen, rank, append([]Peer(nil), peers...), m.wire)
	m.mu.Unlock()
	if old != nil {
		old.fail(Local, -1, ErrSuperseded)
	}
	m.cfg.logger().Debug("ring configured", "generation", gen, "rank", rank, "size", len(peers))
	return nil
}

// AllReduce replaces buf, on every member of the current generation, by the
// element-wise sum of the bufs of all members. See the package
// documentation for what it promises.
func (m *Member) AllReduce(ctx context.Context, buf []float32) error {
	m.mu.Lock()
	g, closed := m.cur, m.closed
	m.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("all-reduce: %w", ErrClosed)
	case g == nil:
		return fmt.Errorf("all-reduce: %w", ErrNotConfigured)
	}
	return g.allReduce(ctx, buf)
}

// SetWire sets how the generations configured from now on send their
// floats (a running generation keeps its own). Every member of a ring must
// use the same: a frame of another width is refused.
func (m *Member) SetWire(w Wire) {
	m.mu.Lock()
	m.wire = w
	m.mu.Unlock()
}

// Generation returns the current generation number (0 before Configure).
func (m *Member) Generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return 0
	}
	return m.cur.gen
}

// Close breaks the current generation's streams and waits for the member's
// goroutines to end. It does not close the transport, which the caller owns.
func (m *Member) Close() error {
	m.mu.Lock()
	g := m.cur
	m.closed = true
	m.mu.Unlock()
	if g != nil {
		g.fail(Local, -1, ErrClosed)
	}
	m.wg.Wait()
	return nil
}
