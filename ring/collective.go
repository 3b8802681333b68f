package ring

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// generation is a member's ring for one generation: its two links, the
// collectives run over them and the goroutines that serve them.
type generation struct {
	m           *Member
	cfg         *Config
	gen         uint64
	rank, n     int
	peers       []Peer
	wire        Wire
	left, right int // ranks of the neighbours

	busy    sync.Mutex // one collective at a time
	linked  bool       // links set up (guarded by busy)
	seq     uint64     // last collective started (guarded by busy)
	recvHdr FrameHeader
	sendHdr FrameHeader
	linksMu sync.Mutex // guards out and in against fail
	out     SendLink
	in      RecvLink

	failOnce sync.Once
	failed   chan struct{} // closed by fail, after err is set
	err      error

	// Sender goroutine: one job per collective, one result back.
	jobs    chan sendJob
	results chan error
	// Frames received so far in the running collective; progress is
	// signalled (never blocking) after each one.
	recvd    atomic.Int64
	progress chan struct{}
	// Context watcher: gets each collective's ctx, then callDone at its end.
	watch    chan context.Context
	callDone chan struct{}
}

type sendJob struct {
	buf []float32
	seq uint64
}

func newGeneration(m *Member, gen uint64, rank int, peers []Peer, wire Wire) *generation {
	n := len(peers)
	g := &generation{
		m: m, cfg: &m.cfg, gen: gen, rank: rank, n: n, peers: peers, wire: wire,
		left: mod(rank-1, n), right: mod(rank+1, n),
		failed:   make(chan struct{}),
		jobs:     make(chan sendJob),
		results:  make(chan error, 1),
		progress: make(chan struct{}, 1),
		watch:    make(chan context.Context),
		callDone: make(chan struct{}),
	}
	if n > 1 {
		m.wg.Add(2)
		go g.sendLoop()
		go g.watchLoop()
	}
	return g
}

// fail breaks the generation once: it records why, wakes every waiter and
// closes both links so that the neighbours notice at once.
func (g *generation) fail(dir Direction, peerRank int, cause error) {
	g.failOnce.Do(func() {
		be := &BrokenError{Generation: g.gen, Rank: g.rank, Dir: dir, PeerRank: peerRank, Err: cause}
		if peerRank >= 0 {
			be.Peer = g.peers[peerRank]
		}
		g.err = be
		close(g.failed)
		g.linksMu.Lock()
		out, in := g.out, g.in
		g.linksMu.Unlock()
		if out != nil {
			out.Close(be)
		}
		if in != nil {
			in.Close(be)
		}
		if !errors.Is(cause, ErrSuperseded) && !errors.Is(cause, ErrClosed) {
			g.cfg.logger().Warn("ring broken", "err", be)
		}
	})
}

// width is the Width of this generation's frames: 0 (float32, the header
// field left out) or 2.
func (g *generation) width() uint32 {
	if g.wire == WireBFloat16 {
		return 2
	}
	return 0
}

func (g *generation) brokenErr() error {
	select {
	case <-g.failed:
		return g.err
	default:
		return nil
	}
}

func (g *generation) allReduce(ctx context.Context, buf []float32) error {
	if g.n == 1 {
		return nil
	}
	if !g.busy.TryLock() {
		return fmt.Errorf("all-reduce in generation %d: another all-reduce is running on this member", g.gen)
	}
	defer g.busy.Unlock()
	if err := g.brokenErr(); err != nil {
		return err
	}
	if len(buf) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		g.fail(Local, -1, fmt.Errorf("all-reduce cancelled before it started: %w", err))
		return g.err
	}
	if !g.linked {
		if err := g.link(ctx); err != nil {
			return err
		}
		g.linked = true
	}
	g.seq++
	seq := g.seq
	g.recvd.Store(0)
	select {
	case <-g.progress: // drop a signal left from the previous collective
	default:
	}

	select {
	case g.watch <- ctx:
	case <-g.failed:
		return g.err
	}
	sent := false
	select {
	case g.jobs <- sendJob{buf: buf, seq: seq}:
		sent = true
	case <-g.failed:
	}
	recvErr := g.receive(buf, seq)
	var sendErr error
	if sent {
		sendErr = <-g.results
	}
	select {
	case g.callDone <- struct{}{}:
	case <-g.failed:
	}
	if recvErr != nil || sendErr != nil || !sent {
		<-g.failed // every error path went through fail
		return g.err
	}
	return nil
}

// link sets up this generation's two streams. Every member dials its right
// neighbour while accepting from its left one, so the ring cannot deadlock.
func (g *generation) link(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.StartTimeout)
	defer cancel()
	go func() {
		select {
		case <-g.failed:
			cancel()
		case <-ctx.Done():
		}
	}()
	self := g.peers[g.rank]
	outID := StreamID{Generation: g.gen, From: self, FromRank: g.rank, To: g.peers[g.right], RingSize: g.n}
	inID := StreamID{Generation: g.gen, From: g.peers[g.left], FromRank: g.left, To: self, RingSize: g.n}

	type dialed struct {
		l   SendLink
		err error
	}
	dc := make(chan dialed, 1)
	go func() {
		l, err := g.m.tr.Dial(ctx, outID)
		dc <- dialed{l, err}
	}()
	in, inErr := g.m.tr.Accept(ctx, inID)
	d := <-dc

	g.linksMu.Lock()
	g.out, g.in = d.l, in
	g.linksMu.Unlock()
	if err := g.brokenErr(); err != nil {
		// fail ran before the links were stored: close them here.
		if d.l != nil {
			d.l.Close(err)
		}
		if in != nil {
			in.Close(err)
		}
		return err
	}
	switch {
	case d.err != nil:
		g.fail(ToRight, g.right, fmt.Errorf("opening stream: %w", d.err))
		return g.err
	case inErr != nil:
		g.fail(FromLeft, g.left, fmt.Errorf("accepting stream: %w", inErr))
		return g.err
	}
	g.cfg.logger().Debug("ring linked", "generation", g.gen, "rank", g.rank, "left", g.peers[g.left], "right", g.peers[g.right])
	return nil
}

// receive runs the receiving half of collective seq in the caller's
// goroutine: frames arrive in order of step, then offset.
func (g *generation) receive(buf []float32, seq uint64) error {
	l := newLayout(len(buf), g.n)
	f := g.cfg.FrameBytes / 4
	first := true
	var n int64
	for s := 0; s < l.steps(); s++ {
		c := l.recvChunk(g.rank, s)
		start, length := l.chunk(c)
		op := ApplyAdd
		if s >= g.n-1 {
			op = ApplyCopy
		}
		for off := 0; off < length; off += f {
			cnt := min(f, length-off)
			want := &g.recvHdr // a field, not a local: it would escape through the interface
			*want = FrameHeader{Generation: g.gen, Seq: seq, Step: uint32(s), Chunk: uint32(c), Offset: uint64(off), Total: uint64(len(buf)), Width: g.width()}
			timeout := g.cfg.frameTimeout(cnt)
			if first {
				timeout = max(timeout, g.cfg.StartTimeout)
				first = false
			}
			if err := g.in.Recv(want, buf[start+off:start+off+cnt], op, time.Now().Add(timeout)); err != nil {
				g.fail(FromLeft, g.left, fmt.Errorf("collective %d step %d chunk %d offset %d: %w", seq, s, c, off, err))
				return err
			}
			n++
			g.recvd.Store(n)
			select {
			case g.progress <- struct{}{}:
			default:
			}
		}
	}
	if err := g.in.Ack(seq); err != nil {
		g.fail(FromLeft, g.left, fmt.Errorf("acknowledging collective %d: %w", seq, err))
		return err
	}
	return nil
}

func (g *generation) sendLoop() {
	defer g.m.wg.Done()
	for {
		select {
		case job := <-g.jobs:
			err := g.send(job.buf, job.seq)
			g.release(err)
			g.results <- err
		case <-g.failed:
			return
		}
	}
}

// send runs the sending half of collective seq. Frame k of step s carries
// the floats that arrived as frame k of step s-1, so it waits for that
// frame only: sending one frame overlaps receiving the next.
func (g *generation) send(buf []float32, seq uint64) error {
	l := newLayout(len(buf), g.n)
	f := g.cfg.FrameBytes / 4
	recvBefore := int64(0) // frames received in steps before s-1
	for s := 0; s < l.steps(); s++ {
		if s >= 2 {
			recvBefore += int64(l.frames(l.recvChunk(g.rank, s-2), f))
		}
		c := l.sendChunk(g.rank, s)
		start, length := l.chunk(c)
		for k, off := int64(0), 0; off < length; k, off = k+1, off+f {
			if s > 0 {
				if err := g.waitReceived(recvBefore + k + 1); err != nil {
					return err
				}
			}
			cnt := min(f, length-off)
			if g.wire == WireBFloat16 {
				// In place: the owner of a chunk keeps the rounded
				// values it sends, as every other member receives them.
				roundBF16(buf[start+off : start+off+cnt])
			}
			h := &g.sendHdr
			*h = FrameHeader{Generation: g.gen, Seq: seq, Step: uint32(s), Chunk: uint32(c), Offset: uint64(off), Total: uint64(len(buf)), Width: g.width()}
			deadline := time.Now().Add(max(g.cfg.frameTimeout(cnt), g.cfg.StartTimeout))
			if err := g.out.Send(h, buf[start+off:start+off+cnt], deadline); err != nil {
				g.fail(ToRight, g.right, fmt.Errorf("collective %d step %d chunk %d offset %d: %w", seq, s, c, off, err))
				return err
			}
		}
	}
	// The transport may still read buf until the neighbour has it all.
	if err := g.out.WaitAck(seq, time.Now().Add(g.cfg.frameTimeout(f))); err != nil {
		g.fail(ToRight, g.right, fmt.Errorf("waiting for the acknowledgement of collective %d: %w", seq, err))
		return err
	}
	return nil
}

// release waits until the transport no longer reads the caller's buffer.
// After a failure the stream is already cancelled, and gRPC drops what it
// had queued at once; if its connection died instead, its writer is gone
// and reads nothing, so the wait is short.
func (g *generation) release(sendErr error) {
	wait := g.cfg.FrameTimeoutFloor
	if sendErr != nil || g.brokenErr() != nil {
		wait = min(wait, 250*time.Millisecond)
	}
	if !g.out.Release(time.Now().Add(wait)) {
		g.cfg.logger().Debug("ring: transport still held a frame when the collective ended", "generation", g.gen, "rank", g.rank)
	}
}

func (g *generation) waitReceived(need int64) error {
	for g.recvd.Load() < need {
		select {
		case <-g.progress:
		case <-g.failed:
			return g.err
		}
	}
	return nil
}

// watchLoop breaks the generation when the context of a running collective
// ends: a collective abandoned half-way cannot be finished by the others.
func (g *generation) watchLoop() {
	defer g.m.wg.Done()
	for {
		select {
		case ctx := <-g.watch:
			select {
			case <-ctx.Done():
				g.fail(Local, -1, fmt.Errorf("all-reduce abandoned: %w", context.Cause(ctx)))
			case <-g.callDone:
			case <-g.failed:
			}
		case <-g.failed:
			return
		}
	}
}
