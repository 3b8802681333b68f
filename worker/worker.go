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
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/internal/rpcopt"
	"github.com/nice-flow/nice/internal/session"
	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/ring"
	"github.com/nice-flow/nice/train"
)

// Worker is one training process: the protocol is its Machine; the
// goroutines of a Worker only move messages and results between the
// machine, the coordinator's session, and the work it orders (ring set-up,
// state transfer, gradient and all-reduce, update, evaluation).
type Worker struct {
	cfg         Config
	log         *slog.Logger
	incarnation uint64

	lis       net.Listener
	localLis  net.Listener // the socket in Config.LocalDir; nil without one
	srv       *grpc.Server
	health    *health.Server
	httpLis   net.Listener
	httpSrv   *http.Server
	obs       *observability
	turn      lastTurn // when the loop last turned (GET /healthz)
	states    *statexfer.Server
	transport *ring.GRPCTransport
	ring      *ring.Member
	addr      string

	// mu guards the trainer: work holds it while it computes or applies, a
	// live state transfer while it copies the state (never while it sends).
	mu       sync.Mutex
	tr       *train.Trainer
	trainSet *mnist.Set
	testSet  *mnist.Set

	snapMu    sync.Mutex
	snap      *snapshot     // the last snapshot (nil while one is taken)
	snapTaken chan struct{} // closed and replaced at each snapshot

	statsMu sync.Mutex
	stats   Stats

	ringArmed atomic.Bool // the ring fault fires in the armed all-reduce

	// Owned by the loop goroutine.
	m       *Machine
	results chan func(time.Time) Actions // results of work, as machine calls
	work    context.CancelFunc           // cancels the work in flight
	quit    chan struct{}                // closed when the loop has ended
	workers sync.WaitGroup               // the work goroutine
	norm    float64                      // gradient norm of the last computed step (written by work)
}

// Stats describe what a worker has done; tests and logs read them.
type Stats struct {
	Generation uint64
	Rank, Size int
	Position   train.Position
	Applied    int64 // steps applied
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
	var localLis net.Listener
	if cfg.LocalDir != "" {
		if localLis, err = ring.ListenLocal(cfg.LocalDir, addr); err != nil {
			lis.Close()
			return nil, fmt.Errorf("worker %s: %w (or leave the local folder unset to use TCP only)", cfg.ID, err)
		}
	}
	closeListeners := func() {
		lis.Close()
		if localLis != nil {
			localLis.Close()
		}
	}
	tp := ring.NewGRPCTransport(cfg.Creds.DialOption())
	if cfg.LocalDir != "" {
		tp.SetLocalDir(cfg.LocalDir, log)
	}
	var rt ring.RingTransport = tp
	w := &Worker{log: log}
	obs := newObservability(w)
	if cfg.Fault.Phase == "ring" {
		rt = ring.WithFaults(tp, w.ringFault(&w.ringArmed))
	}
	rt = &countingTransport{RingTransport: rt, sent: obs.ringSent, received: obs.ringReceived}
	member, err := ring.NewMember(rt, rc)
	if err != nil {
		closeListeners()
		return nil, err
	}
	var httpLis net.Listener
	if cfg.HTTP != "" {
		if httpLis, err = net.Listen("tcp", cfg.HTTP); err != nil {
			closeListeners()
			member.Close()
			return nil, fmt.Errorf("worker %s: listening on %s (HTTP): %w", cfg.ID, cfg.HTTP, err)
		}
	}
	*w = Worker{
		obs:         obs,
		httpLis:     httpLis,
		cfg:         cfg,
		log:         log,
		incarnation: uint64(time.Now().UnixNano()),
		lis:         lis,
		localLis:    localLis,
		transport:   tp,
		ring:        member,
		addr:        addr,
		snapTaken:   make(chan struct{}),
		m:           NewMachine(MachineConfig{DigestEvery: cfg.DigestEvery, FetchRetryMin: cfg.RetryMin, FetchRetryMax: cfg.RetryMax}),
		results:     make(chan func(time.Time) Actions, 1),
		quit:        make(chan struct{}),
	}
	opts := append(ring.ServerOptions(), rpcopt.ServerKeepalive()...)
	opts = append(opts, rpcopt.ServerLimits(ring.MaxMessageBytes, statexfer.MaxChunkMessage)...)
	w.srv = grpc.NewServer(append(opts, cfg.Creds.ServerOption(log))...)
	tp.RegisterServer(w.srv)
	w.states = &statexfer.Server{Src: w, Limits: cfg.StateTransfers, Logger: log}
	nicepb.RegisterStateServiceServer(w.srv, w.states)
	w.health = health.NewServer()
	healthpb.RegisterHealthServer(w.srv, w.health)
	w.noteStanding()
	if httpLis != nil {
		w.httpSrv = w.newHTTPServer()
	}
	return w, nil
}

// HTTPAddr is the address of the worker's HTTP port ("" if none).
func (w *Worker) HTTPAddr() string {
	if w.httpLis == nil {
		return ""
	}
	return w.httpLis.Addr().String()
}

// LocalSocket is the path of the worker's socket in Config.LocalDir ("" if
// none).
func (w *Worker) LocalSocket() string {
	if w.localLis == nil {
		return ""
	}
	return w.localLis.Addr().String()
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

// sessionEvent is what the session goroutine tells the loop.
type sessionEvent struct {
	attached bool
	out      chan *nicepb.WorkerMessage // the session's send queue
	epochs   int
	detached bool
	msg      *nicepb.CoordinatorMessage
}

// Run serves the gRPC server and keeps a session with the coordinator until
// ctx ends. Then, if the worker is attached, it asks the coordinator to let
// it go once its state is checkpointed (Leave) and waits for that, at most
// Config.LeaveTimeout; then it stops everything it started.
func (w *Worker) Run(ctx context.Context) error {
	serveErr := make(chan error, 3)
	go func() { serveErr <- w.srv.Serve(w.lis) }()
	if w.localLis != nil {
		go func() { serveErr <- w.srv.Serve(w.localLis) }()
	}
	w.turn.mark(time.Now())
	if w.httpSrv != nil {
		go func() { serveErr <- w.httpSrv.Serve(w.httpLis) }()
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			w.httpSrv.Shutdown(ctx)
			cancel()
		}()
	}
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
		w.states.Wait()
	}()
	dialer := w.cfg.Sessions
	if dialer == nil {
		conn, err := grpc.NewClient(w.cfg.Coordinator, w.cfg.Creds.DialOption(),
			grpc.WithKeepaliveParams(rpcopt.ClientKeepalive),
			grpc.WithDefaultCallOptions(rpcopt.WorkerCallLimits()...))
		if err != nil {
			return fmt.Errorf("worker %s: coordinator address %q: %w", w.cfg.ID, w.cfg.Coordinator, err)
		}
		defer conn.Close()
		dialer = session.GRPC(conn)
	}
	w.log.Info("worker started", "addr", w.addr, "local_socket", w.LocalSocket(), "http", w.HTTPAddr(), "coordinator", w.cfg.Coordinator, "cluster_ca", w.cfg.Creds.Fingerprint())

	life, endLife := context.WithCancel(context.Background())
	sess := make(chan sessionEvent, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.keepSession(life, dialer, sess)
	}()
	err := w.loop(ctx, sess, serveErr)
	endLife()
	w.cancelWork()
	close(w.quit)
	wg.Wait()
	w.workers.Wait()
	return err
}

// loop owns the machine: every event goes through it, one at a time, and
// it carries out the machine's actions.
func (w *Worker) loop(ctx context.Context, sess <-chan sessionEvent, serveErr <-chan error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	stop := ctx.Done()
	var leaveDeadline <-chan time.Time
	var out chan *nicepb.WorkerMessage
	for {
		var a Actions
		select {
		case <-stop:
			stop = nil
			t := time.NewTimer(w.cfg.LeaveTimeout)
			defer t.Stop()
			leaveDeadline = t.C
			a = w.m.Stop(time.Now())
		case <-leaveDeadline:
			w.log.Warn("not dismissed by the coordinator in time; stopping anyway", "waited", w.cfg.LeaveTimeout)
			return nil
		case err := <-serveErr:
			return fmt.Errorf("worker %s: gRPC or HTTP server stopped: %w", w.cfg.ID, err)
		case ev := <-sess:
			now := time.Now()
			switch {
			case ev.attached:
				out = ev.out
				a = w.m.Attached(now, ev.epochs)
			case ev.detached:
				out = nil
				a = w.m.Detached(now)
			default:
				a = w.m.Message(now, ev.msg)
			}
		case r := <-w.results:
			a = r(time.Now())
		case now := <-tick.C:
			a = w.m.Tick(now)
		}
		w.turn.mark(time.Now())
		if w.carryOut(a, out) {
			return nil
		}
	}
}

// carryOut does what the machine asked; it reports whether to exit.
func (w *Worker) carryOut(a Actions, out chan *nicepb.WorkerMessage) bool {
	for _, l := range a.Logs {
		w.log.Info(l)
	}
	for _, msg := range a.Send {
		if out == nil {
			continue
		}
		if msg.GetReport() != nil {
			w.obs.reportedAt = time.Now()
		}
		if l := msg.GetLeave(); l != nil {
			l.StateDigest = w.digestAt(statexfer.FromPB(l.Position))
		}
		select {
		case out <- msg:
		default:
			w.log.Warn("the session's send queue is full; dropping a message", "kind", fmt.Sprintf("%T", msg.Kind))
		}
	}
	if a.Cancel {
		w.cancelWork()
	}
	switch {
	case a.Prepare != nil:
		o := a.Prepare
		w.startWork(func(context.Context) func(time.Time) Actions {
			err := w.ring.Configure(o.Generation, o.Rank, o.Peers)
			w.mu.Lock()
			v := w.tr.View()
			pos, d := v.Position, v.Digest()
			w.mu.Unlock()
			return func(now time.Time) Actions { return w.m.Prepared(now, o.Generation, pos, d, err) }
		})
	case a.Fetch != nil:
		f := a.Fetch
		w.startWork(func(ctx context.Context) func(time.Time) Actions {
			pos, d, err := w.fetch(ctx, f)
			return func(now time.Time) Actions { return w.m.Fetched(now, f.Generation, pos, d, err) }
		})
	case a.Compute != nil:
		o := *a.Compute
		w.startWork(func(ctx context.Context) func(time.Time) Actions {
			r := w.compute(ctx, o)
			return func(now time.Time) Actions { return w.m.Computed(now, r) }
		})
	case a.Apply != nil:
		o := *a.Apply
		if !w.obs.reportedAt.IsZero() {
			w.obs.commitWait.Observe(time.Since(w.obs.reportedAt).Seconds())
			w.obs.reportedAt = time.Time{}
		}
		w.startWork(func(ctx context.Context) func(time.Time) Actions {
			w.faultAt(ctx, "apply", o.Commit.Step)
			pos, snapDigest, err := w.apply(o.Commit)
			return func(now time.Time) Actions { return w.m.Applied(now, o.Generation, pos, snapDigest, err) }
		})
	case a.Evaluate != nil:
		o := *a.Evaluate
		step := w.m.Position().Step
		w.startWork(func(ctx context.Context) func(time.Time) Actions {
			w.faultAt(ctx, "eval", step)
			sum, lo, hi := w.evaluate(o)
			return func(now time.Time) Actions { return w.m.Evaluated(now, o.Generation, o.Epoch, sum, lo, hi) }
		})
	}
	ms := w.m.Stats()
	pos := w.m.Position()
	w.statsMu.Lock()
	w.stats = Stats{Generation: ms.Generation, Rank: ms.Rank, Size: ms.Size, Position: pos, Applied: ms.Applied}
	w.statsMu.Unlock()
	w.noteStanding()
	return a.Exit
}

// startWork runs one piece of work the machine ordered; its result goes
// back to the loop as a machine call.
func (w *Worker) startWork(do func(context.Context) func(time.Time) Actions) {
	ctx, cancel := context.WithCancel(context.Background())
	w.work = cancel
	w.workers.Add(1)
	go func() {
		defer w.workers.Done()
		defer cancel()
		select {
		case w.results <- do(ctx):
		case <-w.quit:
		}
	}()
}

// cancelWork cancels the work in flight, if any (its result still comes).
func (w *Worker) cancelWork() {
	if w.work != nil {
		w.work()
	}
}

// keepSession keeps a session with the coordinator open until life ends,
// reconnecting with backoff.
func (w *Worker) keepSession(life context.Context, client session.Dialer, sess chan<- sessionEvent) {
	backoff := w.cfg.RetryMin
	for life.Err() == nil {
		began := time.Now()
		err := w.session(life, client, sess)
		if life.Err() != nil {
			return
		}
		if time.Since(began) > 10*w.cfg.RetryMax {
			backoff = w.cfg.RetryMin
		}
		switch status.Code(err) {
		case codes.AlreadyExists, codes.InvalidArgument, codes.PermissionDenied:
			// Retrying will not help until someone acts: say so loudly.
			w.log.Error("the coordinator refuses this worker; retrying", "err", err, "in", backoff)
		default:
			w.log.Warn("no session with the coordinator; retrying", "err", err, "in", backoff)
		}
		select {
		case <-life.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, w.cfg.RetryMax)
	}
}

// session is one attachment to the coordinator, from Hello until the stream
// breaks or life ends. It tells the loop attached, each message, detached.
func (w *Worker) session(life context.Context, client session.Dialer, sess chan<- sessionEvent) error {
	sctx, cancel := context.WithCancel(life)
	defer cancel()
	post := func(ev sessionEvent) bool {
		select {
		case sess <- ev:
			return true
		case <-life.Done():
			return false
		}
	}
	stream, err := client.Dial(sctx)
	if err != nil {
		return fmt.Errorf("opening session: %w", err)
	}
	if err := stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{
		WorkerId: w.cfg.ID, Incarnation: w.incarnation, Addr: w.addr, LastGeneration: w.ring.Generation(),
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
	// From here both directions run on their own goroutines, so that the
	// heartbeats flow while the configuration loads (MNIST: seconds on a
	// busy host) and the coordinator never sees a silent session.
	var heard atomic.Int64 // unix nanoseconds of the last message received
	heard.Store(time.Now().UnixNano())
	failed := make(chan error, 2)
	msgs := make(chan *nicepb.CoordinatorMessage, 1024)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				failed <- fmt.Errorf("session ended: %w", err)
				return
			}
			heard.Store(time.Now().UnixNano())
			if m.GetHeartbeat() != nil {
				continue
			}
			select {
			case msgs <- m:
			case <-sctx.Done():
				return
			}
		}
	}()
	out := make(chan *nicepb.WorkerMessage, 256)
	go func() {
		beat := time.NewTicker(rpcopt.HeartbeatInterval)
		defer beat.Stop()
		heartbeat := &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Heartbeat{Heartbeat: &nicepb.Heartbeat{}}}
		for {
			var m *nicepb.WorkerMessage
			select {
			case <-sctx.Done():
				return
			case m = <-out:
			case now := <-beat.C:
				if silent := now.Sub(time.Unix(0, heard.Load())); silent > w.cfg.SessionTimeout {
					failed <- fmt.Errorf("the coordinator has been silent for %v (session timeout %v)", silent.Round(time.Millisecond), w.cfg.SessionTimeout)
					return
				}
				m = heartbeat
			}
			if err := stream.Send(m); err != nil {
				failed <- fmt.Errorf("sending to the coordinator: %w", err)
				return
			}
		}
	}()
	epochs, err := w.configure(welcome.ConfigJson)
	if err != nil {
		return err
	}
	w.log.Info("attached to the coordinator", "coordinator_incarnation", welcome.CoordinatorIncarnation)
	if !post(sessionEvent{attached: true, out: out, epochs: epochs}) {
		return life.Err()
	}
	defer post(sessionEvent{detached: true})
	for {
		select {
		case err := <-failed:
			return err
		case <-sctx.Done():
			return sctx.Err()
		case m := <-msgs:
			if !post(sessionEvent{msg: m}) {
				return life.Err()
			}
		}
	}
}

// configure makes sure the trainer runs the coordinator's configuration,
// keeping its state when the configuration is the one it already has. It
// returns the run's number of epochs.
func (w *Worker) configure(js []byte) (int, error) {
	var c train.Config
	if err := json.Unmarshal(js, &c); err != nil {
		return 0, fmt.Errorf("coordinator's configuration: %w", err)
	}
	if err := c.Validate(); err != nil {
		return 0, fmt.Errorf("coordinator's configuration: %w", err)
	}
	wire, err := ring.ParseWire(c.GradientWire)
	if err != nil {
		return 0, fmt.Errorf("coordinator's configuration: %w", err)
	}
	// Before any generation of this session is configured: every member
	// of the run sends the gradient alike.
	w.ring.SetWire(wire)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr != nil && w.tr.Config.Hash() == c.Hash() {
		w.tr.Config.Epochs = c.Epochs
		return c.Epochs, nil
	}
	if w.trainSet == nil {
		dir, err := mnist.FindDir(w.cfg.DataDir)
		if err != nil {
			return 0, err
		}
		if w.trainSet, w.testSet, err = mnist.Load(dir); err != nil {
			return 0, err
		}
	}
	tr, err := train.New(c, train.SplitData(c, w.trainSet, w.testSet))
	if err != nil {
		return 0, err
	}
	w.tr = tr
	return c.Epochs, nil
}

// fetch loads the state named by f from its source.
func (w *Worker) fetch(ctx context.Context, f *nicepb.Fetch) (train.Position, uint64, error) {
	t0 := time.Now()
	conn, err := grpc.NewClient(f.SourceAddr, w.cfg.Creds.DialOption(),
		grpc.WithKeepaliveParams(rpcopt.ClientKeepalive),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		return train.Position{}, 0, fmt.Errorf("state source %q: %w", f.SourceAddr, err)
	}
	defer conn.Close()
	w.mu.Lock()
	size, err := statexfer.ExpectConfig(w.tr.Config)
	w.mu.Unlock()
	if err != nil {
		return train.Position{}, 0, err
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	blob, err := statexfer.Fetch(fctx, conn, statexfer.Request{Source: f.SourceAddr, Position: f.Position, Size: size})
	w.obs.transferDone("fetched", len(blob), err)
	if err != nil {
		return train.Position{}, 0, fmt.Errorf("from %s: %w", f.SourceAddr, err)
	}
	s, err := train.DecodeState(blob)
	if err != nil {
		return train.Position{}, 0, fmt.Errorf("state from %s: %w", f.SourceAddr, err)
	}
	d := s.Digest()
	if d != f.StateDigest {
		return train.Position{}, 0, fmt.Errorf("state from %s has digest %016x, the plan says %016x", f.SourceAddr, d, f.StateDigest)
	}
	w.mu.Lock()
	err = w.tr.SetState(s)
	w.mu.Unlock()
	if err != nil {
		return train.Position{}, 0, fmt.Errorf("state from %s: %w", f.SourceAddr, err)
	}
	w.log.Debug("fetched state", "step", s.Position.Step, "from", f.SourceAddr, "bytes", len(blob), "seconds", time.Since(t0).Seconds())
	return s.Position, d, nil
}

// compute computes this rank's shard of the gradient of the step at
// o.Position and all-reduces it.
func (w *Worker) compute(ctx context.Context, o ComputeOrder) ComputeResult {
	r := ComputeResult{Generation: o.Generation, Step: o.Position.Step}
	w.mu.Lock()
	tr := w.tr
	if tr.Position != o.Position {
		w.mu.Unlock()
		r.Err = fmt.Errorf("asked to compute step %d, the trainer is at step %d", o.Position.Step, tr.Position.Step)
		return r
	}
	idx := tr.BatchIndices(o.Position)
	r.Lo, r.Hi = train.Shard(len(idx), o.Rank, o.Size)
	if o.ParamsDigest {
		r.ParamsDigest = max(train.Digest(tr.Model.Params), 1)
	}
	t0 := time.Now()
	w.faultAt(ctx, "gradient", o.Position.Step)
	r.SumLL = tr.ComputeGradient(idx[r.Lo:r.Hi], o.Position.Epoch)
	r.ComputeSeconds = time.Since(t0).Seconds()
	w.mu.Unlock()
	w.obs.computeSeconds.Observe(r.ComputeSeconds)

	t1 := time.Now()
	w.ringArmed.Store(w.cfg.Fault.Phase == "ring" && w.cfg.Fault.Step == o.Position.Step)
	if err := w.ring.AllReduce(ctx, tr.Grad); err != nil {
		r.Err = err
		var be *ring.BrokenError
		if errors.As(err, &be) && be.PeerRank >= 0 {
			r.Peer = be.Peer.ID
		}
		if ctx.Err() == nil {
			w.obs.allreduceFails.Inc() // not a step its generation abandoned
		}
		return r
	}
	r.AllreduceSeconds = time.Since(t1).Seconds()
	w.obs.allreduceSeconds.Observe(r.AllreduceSeconds)
	w.obs.computed.Inc()
	// The norm serves twice: a NaN or Inf anywhere makes it non-finite,
	// and the update after the commit reuses it. The digest (train.Digest)
	// comes from the same pass over the gradient.
	var digest uint32
	w.norm, digest = tr.Opt.GradNormDigest(tr.Grad)
	r.NonFinite = math.IsNaN(w.norm) || math.IsInf(w.norm, 0) || math.IsNaN(r.SumLL) || math.IsInf(r.SumLL, 0)
	r.GradDigest = digest
	w.faultAt(ctx, "report", o.Position.Step)
	return r
}

// digestAt is the digest of the trainer's state if it is at pos, else 0
// (not known). A Leave carries it: when every member leaves holding the
// same state, the coordinator takes their digests as the agreement that
// lets it store that state.
func (w *Worker) digestAt(pos train.Position) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr == nil || w.tr.Position != pos {
		return 0
	}
	return w.tr.View().Digest()
}

// apply applies a committed step with the norm of its reduced gradient,
// and keeps a snapshot if the commit asks for one, returning its digest.
func (w *Worker) apply(c *nicepb.Commit) (train.Position, uint64, error) {
	t0 := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() { w.obs.applySeconds.Observe(time.Since(t0).Seconds()) }()
	tr := w.tr
	if tr.Position.Step != c.Step {
		return tr.Position, 0, fmt.Errorf("commit of step %d, the trainer is at step %d", c.Step, tr.Position.Step)
	}
	if err := tr.ApplyWithNorm(int(c.Batch), c.SumLl, w.norm); err != nil {
		return tr.Position, 0, err
	}
	var digest uint64
	if c.Snapshot {
		digest = w.takeSnapshot(tr)
	}
	return tr.Position, digest, nil
}

// snapshot is a copy of the trainer's state at a commit that asked for
// one. Transfers read it without a lock; the next snapshot is taken into
// another buffer while any transfer still reads this one.
type snapshot struct {
	st      train.State
	readers int // guarded by Worker.snapMu
}

// takeSnapshot copies the trainer's state into a snapshot no transfer
// reads (reusing the last one's buffers when none does), publishes it, and
// returns its digest.
func (w *Worker) takeSnapshot(tr *train.Trainer) uint64 {
	w.snapMu.Lock()
	s := w.snap
	w.snap = nil // transfers asking meanwhile wait for the new one
	if s == nil || s.readers > 0 {
		s = new(snapshot) // a transfer keeps the old one until it is done
	}
	w.snapMu.Unlock()
	tr.CopyInto(&s.st)
	digest := s.st.Digest()
	w.snapMu.Lock()
	w.snap = s
	close(w.snapTaken)
	w.snapTaken = make(chan struct{})
	w.snapMu.Unlock()
	return digest
}

// evaluate scores this rank's shard of the scored set.
func (w *Worker) evaluate(o EvalOrder) (sum float64, lo, hi int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	lo, hi = train.Shard(w.tr.Data.Eval.N, o.Rank, o.Size)
	return w.tr.EvalSum(lo, hi), lo, hi
}

// WriteState serves the live state (only while no step runs) or the last
// snapshot to a peer or the coordinator. The live state is copied under
// the trainer's lock and sent without it, a snapshot is sent from itself:
// a receiver that stops reading never holds up training.
func (w *Worker) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), out io.Writer) (err error) {
	var n int64
	counted := func(v int64) { n = v; size(v) }
	defer func() { w.obs.transferDone("served", int(n), err) }()
	return w.writeState(ctx, pos, snapshot, counted, out)
}

func (w *Worker) writeState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), out io.Writer) error {
	want := statexfer.FromPB(pos)
	if snapshot {
		return w.writeSnapshot(ctx, want, size, out)
	}
	st, err := w.liveCopy(want)
	if err != nil {
		return err
	}
	n, err := st.EncodedLen()
	if err != nil {
		return err
	}
	size(n)
	_, err = st.WriteTo(out)
	return err
}

// liveCopy copies the trainer's state if it is at want.
func (w *Worker) liveCopy(want train.Position) (*train.State, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tr == nil || w.tr.Position != want {
		have := "none"
		if w.tr != nil {
			have = strconv.FormatInt(w.tr.Position.Step, 10)
		}
		return nil, fmt.Errorf("%w: live state is at step %s, not %d", statexfer.ErrUnavailable, have, want.Step)
	}
	st := new(train.State)
	w.tr.CopyInto(st)
	return st, nil
}

// snapshotWait bounds how long a request for a snapshot waits for the commit
// that takes it: the coordinator asks as soon as it sends the commit.
const snapshotWait = 30 * time.Second

func (w *Worker) writeSnapshot(ctx context.Context, want train.Position, size func(int64), out io.Writer) error {
	deadline := time.NewTimer(snapshotWait)
	defer deadline.Stop()
	for {
		s, have, taken := w.readSnapshot(want)
		if s != nil {
			defer w.doneReading(s)
			n, err := s.st.EncodedLen()
			if err != nil {
				return err
			}
			size(n)
			_, err = s.st.WriteTo(out)
			return err
		}
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

// readSnapshot returns the snapshot at want, counted as read until
// doneReading; otherwise the step of the snapshot there is (-1: none) and
// a channel closed at the next one.
func (w *Worker) readSnapshot(want train.Position) (s *snapshot, have int64, taken <-chan struct{}) {
	w.snapMu.Lock()
	defer w.snapMu.Unlock()
	if w.snap == nil {
		return nil, -1, w.snapTaken
	}
	if w.snap.st.Position == want {
		w.snap.readers++
		return w.snap, want.Step, nil
	}
	return nil, w.snap.st.Position.Step, w.snapTaken
}

func (w *Worker) doneReading(s *snapshot) {
	w.snapMu.Lock()
	s.readers--
	w.snapMu.Unlock()
}
