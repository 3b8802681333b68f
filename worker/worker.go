package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/ring"
	"github.com/nice-flow/nice/train"
)

// Worker is one training process.
type Worker struct {
	cfg         Config
	log         *slog.Logger
	incarnation uint64

	lis       net.Listener
	srv       *grpc.Server
	transport *ring.GRPCTransport
	ring      *ring.Member
	addr      string

	// mu guards the trainer: the training loop holds it while it computes
	// or applies, a live state transfer while it reads.
	mu       sync.Mutex
	tr       *train.Trainer
	trainSet *mnist.Set
	testSet  *mnist.Set

	snapMu    sync.RWMutex
	snap      train.State
	snapValid bool
	snapTaken chan struct{} // closed and replaced at each snapshot

	statsMu sync.Mutex
	stats   Stats

	ringArmed atomic.Bool // the ring fault fires in the armed all-reduce
}

// Stats describe what a worker has done; tests and logs read them.
type Stats struct {
	Generation uint64
	Rank, Size int
	Position   train.Position
	Applied    int64 // steps applied
}

// keepaliveParams make a dead coordinator or peer connection show within a
// few seconds even when no packet would otherwise flow.
var keepaliveParams = keepalive.ClientParameters{Time: time.Second, Timeout: 2 * time.Second, PermitWithoutStream: true}

// ServerKeepalive lets clients ping as often as keepaliveParams does.
var ServerKeepalive = []grpc.ServerOption{
	grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 500 * time.Millisecond, PermitWithoutStream: true}),
	grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Second, Timeout: 2 * time.Second}),
}

// New validates cfg and opens the worker's gRPC listener; Run serves it.
func New(cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("worker", cfg.ID)
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("worker %s: listening on %s: %w", cfg.ID, cfg.Listen, err)
	}
	addr := cfg.Advertise
	if addr == "" {
		_, port, _ := net.SplitHostPort(lis.Addr().String())
		addr = net.JoinHostPort(cfg.AdvertiseHost, port)
	}
	rc := cfg.Ring
	rc.Logger = log
	tp := ring.NewGRPCTransport()
	var rt ring.RingTransport = tp
	w := &Worker{}
	if cfg.Fault.Phase == "ring" {
		rt = ring.WithFaults(tp, w.ringFault(&w.ringArmed))
	}
	member, err := ring.NewMember(rt, rc)
	if err != nil {
		lis.Close()
		return nil, err
	}
	*w = Worker{
		cfg:         cfg,
		log:         log,
		incarnation: uint64(time.Now().UnixNano()),
		lis:         lis,
		transport:   tp,
		ring:        member,
		addr:        addr,
		snapTaken:   make(chan struct{}),
	}
	w.srv = grpc.NewServer(append(ring.ServerOptions(), ServerKeepalive...)...)
	tp.RegisterServer(w.srv)
	nicepb.RegisterStateServiceServer(w.srv, &statexfer.Server{Src: w})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(w.srv, hs)
	return w, nil
}

// Addr is the address the worker advertises for its gRPC server.
func (w *Worker) Addr() string { return w.addr }

// ID is the worker's stable id.
func (w *Worker) ID() string { return w.cfg.ID }

// Incarnation identifies this start of the worker.
func (w *Worker) Incarnation() uint64 { return w.incarnation }

// Stats returns a copy of the worker's counters.
func (w *Worker) Stats() Stats {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	return w.stats
}

func (w *Worker) updateStats(f func(*Stats)) {
	w.statsMu.Lock()
	f(&w.stats)
	w.statsMu.Unlock()
}

// State returns a deep copy of the worker's training state (nil before the
// coordinator sent a configuration).
func (w *Worker) State() *train.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr == nil {
		return nil
	}
	return w.tr.State()
}

// Run serves the gRPC server and keeps a session with the coordinator until
// ctx ends; then it stops everything it started.
func (w *Worker) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- w.srv.Serve(w.lis) }()
	defer func() {
		w.ring.Close()
		w.transport.Close()
		stopped := make(chan struct{})
		go func() { w.srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			w.srv.Stop()
			<-stopped
		}
	}()
	conn, err := grpc.NewClient(w.cfg.Coordinator,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepaliveParams))
	if err != nil {
		return fmt.Errorf("worker %s: coordinator address %q: %w", w.cfg.ID, w.cfg.Coordinator, err)
	}
	defer conn.Close()
	client := nicepb.NewCoordinatorClient(conn)
	w.log.Info("worker started", "addr", w.addr, "coordinator", w.cfg.Coordinator)
	backoff := w.cfg.RetryMin
	for {
		began := time.Now()
		err := w.session(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		select {
		case err := <-serveErr:
			return fmt.Errorf("worker %s: gRPC server stopped: %w", w.cfg.ID, err)
		default:
		}
		if time.Since(began) > 10*w.cfg.RetryMax {
			backoff = w.cfg.RetryMin
		}
		w.log.Warn("no session with the coordinator; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, w.cfg.RetryMax)
	}
}

// generation is the training loop of one started generation.
type generation struct {
	id      uint64
	rank    int
	size    int
	commits chan *nicepb.Commit
	cancel  context.CancelFunc
	done    chan struct{}
}

func (g *generation) stop() {
	if g == nil {
		return
	}
	g.cancel()
	<-g.done
}

// session is one attachment to the coordinator, from Hello until the stream
// breaks or ctx ends.
func (w *Worker) session(ctx context.Context, client nicepb.CoordinatorClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Session(sctx)
	if err != nil {
		return fmt.Errorf("opening session: %w", err)
	}
	var sendMu sync.Mutex
	send := func(m *nicepb.WorkerMessage) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{
		WorkerId: w.cfg.ID, Incarnation: w.incarnation, Addr: w.addr,
	}}}); err != nil {
		return fmt.Errorf("sending hello: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("waiting for welcome: %w", err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return fmt.Errorf("coordinator sent %T before its welcome", first.Kind)
	}
	if err := w.configure(welcome.ConfigJson); err != nil {
		return err
	}
	w.log.Info("attached to the coordinator", "coordinator_incarnation", welcome.CoordinatorIncarnation)

	msgs := make(chan *nicepb.CoordinatorMessage, 64)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-sctx.Done():
				return
			}
		}
	}()

	var plan *nicepb.Plan
	var gen *generation
	defer func() { gen.stop() }()
	for {
		var m *nicepb.CoordinatorMessage
		select {
		case err := <-recvErr:
			return fmt.Errorf("session ended: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case m = <-msgs:
		}
		switch k := m.Kind.(type) {
		case *nicepb.CoordinatorMessage_Plan:
			gen.stop()
			gen = nil
			plan = k.Plan
			peers := make([]ring.Peer, len(plan.Ring))
			for i, p := range plan.Ring {
				peers[i] = ring.Peer{ID: p.Id, Addr: p.Addr}
			}
			if err := w.ring.Configure(plan.Generation, int(plan.Rank), peers); err != nil {
				return fmt.Errorf("generation %d: %w", plan.Generation, err)
			}
			w.updateStats(func(s *Stats) { s.Generation, s.Rank, s.Size = plan.Generation, int(plan.Rank), len(plan.Ring) })
			if err := send(w.ready(plan.Generation)); err != nil {
				return err
			}
		case *nicepb.CoordinatorMessage_Fetch:
			if plan == nil || k.Fetch.Generation != plan.Generation {
				continue
			}
			if err := w.fetch(sctx, k.Fetch); err != nil {
				return fmt.Errorf("generation %d: %w", k.Fetch.Generation, err)
			}
			if err := send(w.ready(plan.Generation)); err != nil {
				return err
			}
		case *nicepb.CoordinatorMessage_Start:
			if plan == nil || k.Start.Generation != plan.Generation || gen != nil {
				continue
			}
			gctx, gcancel := context.WithCancel(sctx)
			gen = &generation{id: plan.Generation, rank: int(plan.Rank), size: len(plan.Ring),
				commits: make(chan *nicepb.Commit, 4), cancel: gcancel, done: make(chan struct{})}
			go w.train(gctx, gen, int(k.Start.EvalEpoch), send)
		case *nicepb.CoordinatorMessage_Commit:
			if gen == nil || k.Commit.Generation != gen.id {
				continue
			}
			select {
			case gen.commits <- k.Commit:
			default:
				return fmt.Errorf("generation %d: commits arrive faster than steps", gen.id)
			}
		}
	}
}

// configure makes sure the trainer runs the coordinator's configuration,
// keeping its state when the configuration is the one it already has.
func (w *Worker) configure(js []byte) error {
	var c train.Config
	if err := json.Unmarshal(js, &c); err != nil {
		return fmt.Errorf("coordinator's configuration: %w", err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("coordinator's configuration: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr != nil && w.tr.Config.Hash() == c.Hash() {
		return nil
	}
	if w.trainSet == nil {
		dir, err := mnist.FindDir(w.cfg.DataDir)
		if err != nil {
			return err
		}
		if w.trainSet, w.testSet, err = mnist.Load(dir); err != nil {
			return err
		}
	}
	tr, err := train.New(c, train.SplitData(c, w.trainSet, w.testSet))
	if err != nil {
		return err
	}
	w.tr = tr
	return nil
}

// ready describes the worker's state for a generation.
func (w *Worker) ready(gen uint64) *nicepb.WorkerMessage {
	w.mu.Lock()
	v := w.tr.View()
	r := &nicepb.Ready{Generation: gen, HasState: true, Position: statexfer.ToPB(v.Position), StateDigest: v.Digest()}
	w.mu.Unlock()
	return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Ready{Ready: r}}
}

// fetch loads the state named by f from its source.
func (w *Worker) fetch(ctx context.Context, f *nicepb.Fetch) error {
	t0 := time.Now()
	conn, err := grpc.NewClient(f.SourceAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		return fmt.Errorf("state source %q: %w", f.SourceAddr, err)
	}
	defer conn.Close()
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	blob, err := statexfer.Fetch(fctx, conn, f.Position, false)
	if err != nil {
		return fmt.Errorf("from %s: %w", f.SourceAddr, err)
	}
	s, err := train.DecodeState(blob)
	if err != nil {
		return fmt.Errorf("state from %s: %w", f.SourceAddr, err)
	}
	if d := s.Digest(); d != f.StateDigest {
		return fmt.Errorf("state from %s has digest %016x, the plan says %016x", f.SourceAddr, d, f.StateDigest)
	}
	w.mu.Lock()
	err = w.tr.SetState(s)
	w.mu.Unlock()
	if err != nil {
		return fmt.Errorf("state from %s: %w", f.SourceAddr, err)
	}
	w.updateStats(func(st *Stats) { st.Position = s.Position })
	w.log.Info("fetched state", "step", s.Position.Step, "from", f.SourceAddr, "bytes", len(blob), "seconds", time.Since(t0).Seconds())
	return nil
}

// train runs steps of generation g until it is told to hold, training is
// done, or ctx ends (a new plan, the session ending).
func (w *Worker) train(ctx context.Context, g *generation, evalEpoch int, send func(*nicepb.WorkerMessage) error) {
	defer close(g.done)
	log := w.log.With("generation", g.id, "rank", g.rank)
	if evalEpoch > 0 {
		if err := w.evaluate(g, evalEpoch, send); err != nil {
			log.Warn("evaluation not sent", "err", err)
			return
		}
	}
	for ctx.Err() == nil {
		w.mu.Lock()
		tr := w.tr
		if tr.Done() {
			w.mu.Unlock()
			return
		}
		pos := tr.Position
		idx := tr.BatchIndices(pos)
		lo, hi := train.Shard(len(idx), g.rank, g.size)
		var pd uint32
		if w.cfg.DigestEvery > 0 && pos.Step%int64(w.cfg.DigestEvery) == 0 {
			pd = max(train.Digest(tr.Model.Params), 1)
		}
		t0 := time.Now()
		w.faultAt(ctx, "gradient", pos.Step)
		ll := tr.ComputeGradient(idx[lo:hi], pos.Epoch)
		tc := time.Since(t0)
		w.mu.Unlock()

		t1 := time.Now()
		w.ringArmed.Store(w.cfg.Fault.Phase == "ring" && w.cfg.Fault.Step == pos.Step)
		if err := w.ring.AllReduce(ctx, tr.Grad); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("all-reduce failed", "step", pos.Step, "err", err)
			var be *ring.BrokenError
			peer := ""
			if errors.As(err, &be) && be.PeerRank >= 0 {
				peer = be.Peer.ID
			}
			_ = send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_RingFailure{RingFailure: &nicepb.RingFailure{
				Generation: g.id, PeerId: peer, Error: err.Error(),
			}}})
			return
		}
		ta := time.Since(t1)
		// The norm serves twice: a NaN or Inf anywhere makes it non-finite,
		// and the update after the commit reuses it.
		norm := tr.Opt.GradNorm(tr.Grad)
		rep := &nicepb.Report{
			Generation: g.id, Step: pos.Step, GradDigest: train.Digest(tr.Grad), SumLl: ll,
			Lo: int32(lo), Hi: int32(hi), ParamsDigest: pd,
			ComputeSeconds: tc.Seconds(), AllreduceSeconds: ta.Seconds(),
			NonFinite: math.IsNaN(norm) || math.IsInf(norm, 0),
		}
		w.faultAt(ctx, "report", pos.Step)
		if err := send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: rep}}); err != nil {
			return
		}
		var c *nicepb.Commit
		select {
		case c = <-g.commits:
		case <-ctx.Done():
			// A commit that arrived just before the next plan still counts:
			// the coordinator sent it first, and the plan assumes it applied.
			select {
			case c = <-g.commits:
			default:
				return
			}
		}
		if c.Step != pos.Step {
			log.Error("commit for another step", "commit", c.Step, "step", pos.Step)
			return
		}
		w.mu.Lock()
		err := tr.ApplyWithNorm(int(c.Batch), c.SumLl, norm)
		if err == nil && c.Snapshot {
			w.snapMu.Lock()
			tr.CopyInto(&w.snap)
			w.snapValid = true
			close(w.snapTaken)
			w.snapTaken = make(chan struct{})
			w.snapMu.Unlock()
		}
		now := tr.Position
		w.mu.Unlock()
		if err != nil {
			log.Error("committed step not applied", "err", err)
			return
		}
		w.updateStats(func(s *Stats) { s.Applied++; s.Position = now })
		if c.EvalEpoch > 0 {
			if err := w.evaluate(g, int(c.EvalEpoch), send); err != nil {
				return
			}
		}
		if c.Hold {
			return
		}
	}
}

// evaluate scores this rank's shard of the scored set and reports it.
func (w *Worker) evaluate(g *generation, epoch int, send func(*nicepb.WorkerMessage) error) error {
	w.mu.Lock()
	lo, hi := train.Shard(w.tr.Data.Eval.N, g.rank, g.size)
	sum := w.tr.EvalSum(lo, hi)
	w.mu.Unlock()
	return send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Eval{Eval: &nicepb.EvalReport{
		Generation: g.id, Epoch: int32(epoch), SumLl: sum, Lo: int32(lo), Hi: int32(hi),
	}}})
}

// WriteState serves the live state (only while no step runs) or the last
// snapshot to a peer or the coordinator.
func (w *Worker) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), out io.Writer) error {
	want := statexfer.FromPB(pos)
	if snapshot {
		return w.writeSnapshot(ctx, want, size, out)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr == nil || w.tr.Position != want {
		have := "none"
		if w.tr != nil {
			have = strconv.FormatInt(w.tr.Position.Step, 10)
		}
		return fmt.Errorf("%w: live state is at step %s, not %d", statexfer.ErrUnavailable, have, want.Step)
	}
	v := w.tr.View()
	size(v.EncodedLen())
	_, err := v.WriteTo(out)
	return err
}

// snapshotWait bounds how long a request for a snapshot waits for the commit
// that takes it: the coordinator asks as soon as it sends the commit.
const snapshotWait = 30 * time.Second

func (w *Worker) writeSnapshot(ctx context.Context, want train.Position, size func(int64), out io.Writer) error {
	deadline := time.NewTimer(snapshotWait)
	defer deadline.Stop()
	for {
		w.snapMu.RLock()
		if w.snapValid && w.snap.Position == want {
			defer w.snapMu.RUnlock()
			size(w.snap.EncodedLen())
			_, err := w.snap.WriteTo(out)
			return err
		}
		have, taken := w.snap.Position.Step, w.snapTaken
		w.snapMu.RUnlock()
		if have > want.Step {
			return fmt.Errorf("%w: the snapshot is at step %d, past %d", statexfer.ErrUnavailable, have, want.Step)
		}
		select {
		case <-taken:
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%w: no snapshot at step %d within %v", statexfer.ErrUnavailable, want.Step, snapshotWait)
		}
	}
}
