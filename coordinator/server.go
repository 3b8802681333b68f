package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/membership"
	"github.com/nice-flow/nice/internal/rpcopt"
	"github.com/nice-flow/nice/internal/session"
	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// Config configures a Server.
type Config struct {
	// Train is the run's configuration; a checkpoint's configuration wins
	// over it when resuming (see Resume).
	Train train.Config
	// Listen is the gRPC address; Advertise how workers reach it (default:
	// the listener's address).
	Listen, Advertise string
	// Creds, if non-nil, makes the gRPC server require the cluster's
	// certificates (mutual TLS), the snapshot fetches present them, and
	// gossip encrypt with its key (it fills in Gossip.Creds when that is
	// nil). Nil means plaintext everywhere.
	Creds *creds.Bundle
	// HTTP, if set, serves GET /healthz, /readyz, /status and /metrics
	// (Prometheus).
	HTTP string
	// DataDir is the MNIST folder ("" finds it; see mnist.FindDir). The
	// coordinator reads it only to start a run whose initial state depends
	// on the data (train.Config.NeedsData).
	DataDir string
	// StateDir holds the bbolt checkpoint file (nice.db), the ledger and the
	// sample grids.
	StateDir string
	// Store keeps the checkpoints. nil opens the bbolt file StateDir/nice.db;
	// a store passed in is closed by the server when it stops.
	Store checkpoint.Store
	// Ledger receives the ledger of committed steps. nil opens (appending)
	// StateDir/ledger.jsonl; a file passed in is closed by the server when
	// it stops.
	Ledger LedgerFile
	// FinalCheckpointTimeout bounds how long Serve, once its context ends,
	// waits for the workers to stop at a step boundary and the final
	// checkpoint to be taken (0: DefaultFinalCheckpointTimeout). A write
	// then in progress gets up to a minute more to finish.
	FinalCheckpointTimeout time.Duration
	// Membership, if non-nil, is the membership the server watches for
	// workers declared dead (it is left and shut down when the server
	// stops). Otherwise Gossip, if non-nil, makes the coordinator a gossip
	// seed with that configuration.
	Membership membership.Membership
	Gossip     *membership.Config
	// Machine tunes the step logic; its set sizes are filled in by New.
	Machine MachineConfig
	// KeepCheckpoints is how many checkpoints bbolt keeps.
	KeepCheckpoints int
	// Samples is the size of each epoch's sample grid (0: none).
	Samples int
	// SessionTimeout ends a worker's session when it has sent nothing (not
	// even a heartbeat) for this long, has not sent its Hello within as
	// long, or has not taken a message for as long
	// (0: rpcopt.DefaultSessionTimeout).
	SessionTimeout time.Duration
	// MaxSessions bounds the sessions open at once (0: DefaultMaxSessions);
	// more are refused with ResourceExhausted. Each holds a few goroutines
	// and a queue of messages, and anyone who reaches the port can open
	// one, so it is bounded; set it above the number of workers the run
	// may have, with room for restarted workers whose old session has not
	// ended yet.
	MaxSessions int
	// Logger receives the coordinator's logs (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultFinalCheckpointTimeout is Config.FinalCheckpointTimeout's default.
const DefaultFinalCheckpointTimeout = 30 * time.Second

// DefaultMaxSessions is the default of Config.MaxSessions: far more
// workers than a run of this project has.
const DefaultMaxSessions = 256

// DefaultMachine returns step-logic settings for loopback and containers.
func DefaultMachine() MachineConfig {
	return MachineConfig{
		MinWorkers:      1,
		Settle:          500 * time.Millisecond,
		PrepareTimeout:  3 * time.Minute,
		StepTimeout:     3 * time.Minute,
		RingGrace:       1500 * time.Millisecond,
		CheckpointEvery: 100,
		DigestEvery:     10,
	}
}

// Server is a running coordinator.
type Server struct {
	cfg         Config
	log         *slog.Logger
	incarnation uint64
	configJSON  []byte
	advertise   string // the gRPC address workers reach

	lis     net.Listener
	srv     *grpc.Server
	states  *statexfer.Server
	httpSrv *http.Server
	httpLis net.Listener
	gossip  membership.Membership
	store   checkpoint.Store
	writer  *checkpoint.Writer
	ledger  *ledger
	health  *health.Server
	obs     *observability // metrics and the gRPC health verdict
	// healthMu orders health updates, so that an older verdict never
	// overwrites a newer one.
	healthMu sync.Mutex

	events       chan event
	wg           sync.WaitGroup
	openSessions atomic.Int64 // Session calls running (see Config.MaxSessions)

	// Owned by the loop goroutine.
	m         *Machine
	sessions  map[string]*workerSession
	lastRetry time.Time // when a failed checkpoint was last retried

	// mu guards what other goroutines read.
	mu       sync.Mutex
	status   Status
	own      ownState
	scores   []train.EpochResult
	snapping *SnapshotRequest // the snapshot being taken, if any
	nextSnap *SnapshotRequest // the newest request that waits for it
	stopped  chan struct{}    // closed when a requested stop completed
	stopping bool             // a stop was requested
	params   int              // floats in the all-reduced gradient
	// retryCheckpoint: a checkpoint write failed, so the next commit takes
	// a new one (see retryFailedCheckpoint).
	retryCheckpoint bool
	// agreed is the machine's list of states the replicas agreed on;
	// agreedChanged is closed (and replaced) when it changes.
	agreed        []Agreement
	agreedChanged chan struct{}

	loopDone chan struct{} // closed when the loop goroutine ends

	dash *dashboard // the HTTP port's dashboard and its history
}

// ownState is the newest state the coordinator holds, served to workers when
// none of them holds the state a generation starts from.
type ownState struct {
	pos    train.Position
	blob   []byte
	digest uint64
}

type workerSession struct {
	heard       atomic.Int64 // unix nanoseconds of the last message received
	id          string
	addr        string
	incarnation uint64
	lastGen     uint64
	out         chan *nicepb.CoordinatorMessage
	// cancel ends the session; the cause is what the worker is told.
	cancel context.CancelCauseFunc
}

// Why the coordinator ends a session, as the worker is told.
var (
	errReplaced   = status.Error(codes.Aborted, "session replaced by a newer session of the same worker")
	errGossipGone = status.Error(codes.Unavailable, "gossip declared this worker dead")
	errStopping   = status.Error(codes.Unavailable, "the coordinator is stopping")
	errSlow       = status.Error(codes.ResourceExhausted, "the worker did not keep up with its messages")
	errDisconnect = status.Error(codes.Aborted, "the coordinator dropped this worker from the generation (its log says why)")
)

type event struct {
	attach *workerSession
	detach *workerSession
	gone   *membership.Member // gossip declared a worker dead
	msg    *nicepb.WorkerMessage
	from   *workerSession
	saved  *savedState     // the coordinator holds this state (in memory)
	stored *train.Position // the checkpoint of this state is on disk
	stop   bool
}

type savedState struct {
	pos    train.Position
	digest uint64
}

// New opens the checkpoint store, resumes from its newest checkpoint that
// verifies (or starts a new run), and listens. Serve runs it.
func New(cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	store := cfg.Store
	if store == nil {
		var err error
		dbPath := filepath.Join(cfg.StateDir, "nice.db")
		if store, err = checkpoint.OpenBolt(dbPath, checkpoint.BoltOptions{Keep: cfg.KeepCheckpoints, Logger: log}); err != nil {
			return nil, err
		}
	}
	s := &Server{cfg: cfg, log: log, incarnation: uint64(time.Now().UnixNano()), store: store,
		events: make(chan event, 256), sessions: map[string]*workerSession{}, stopped: make(chan struct{}), loopDone: make(chan struct{}), agreedChanged: make(chan struct{})}
	s.obs = newObservability(s)
	if cfg.Ledger != nil {
		s.ledger = &ledger{f: cfg.Ledger} // set at once: closeAll closes it if New fails
	}
	s.dash = newDashboard(s)
	fail := func(err error) (*Server, error) {
		s.closeAll()
		return nil, err
	}
	st, from, err := s.resume(cfg.Train)
	if err != nil {
		return fail(err)
	}
	if from != nil {
		s.status.LastCheckpointStep = int64(from.Step)
		s.status.lastCheckpointTime = from.Time
		s.status.LastCheckpointBytes = from.Size
		s.dash.noteResumed(from)
		s.dash.drawSamples(st)
	}
	s.cfg.Train = st.Config
	if s.configJSON, err = json.Marshal(st.Config); err != nil {
		return fail(err)
	}
	blob, err := st.Encode()
	if err != nil {
		return fail(fmt.Errorf("the state to start from: %w", err))
	}
	s.own = ownState{pos: st.Position, blob: blob, digest: st.Digest()}
	s.params = len(st.Params)
	kept, err := LoadScores(cfg.StateDir, st.Config.Hash())
	if err != nil {
		return fail(err)
	}
	s.scores = MergeScores(append(s.scores, st.History.Epochs...), kept)

	trainN, evalN := mnist.TrainSize, mnist.TestSize
	if st.Config.Validation {
		trainN -= mnist.ValidationSize
		evalN = mnist.ValidationSize
	}
	mc := cfg.Machine
	mc.TrainN, mc.EvalN, mc.Batch, mc.Epochs = trainN, evalN, st.Config.Batch, st.Config.Epochs

	if s.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fail(fmt.Errorf("listening on %s: %w", cfg.Listen, err))
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = s.lis.Addr().String()
	} else if h, port, err := net.SplitHostPort(adv); err == nil && port == "0" {
		// Listening on port 0 picks a port: advertise the one picked.
		_, bound, _ := net.SplitHostPort(s.lis.Addr().String())
		adv = net.JoinHostPort(h, bound)
	}
	s.advertise = adv
	s.m = NewMachine(mc, st.Position, s.own.digest, adv)
	if e := st.Position.Epoch; e > 0 && st.Position.StepInEpoch == 0 && !slices.ContainsFunc(s.scores, func(r train.EpochResult) bool { return r.Epoch == e }) {
		s.m.NeedScore(e)
	}
	if s.ledger == nil {
		f, err := openLedgerFile(cfg.StateDir)
		if err != nil {
			return fail(err)
		}
		s.ledger = &ledger{f: f}
	}
	s.writer = checkpoint.NewWriter(store, checkpoint.WriterOptions{Logger: log, OnResult: s.onSaved})

	opts := append(rpcopt.ServerKeepalive(), rpcopt.ServerLimits(rpcopt.MaxWorkerMessage, statexfer.MaxChunkMessage)...)
	opts = append(opts, rpcopt.UnaryTimeout(rpcopt.DefaultUnaryTimeout), cfg.Creds.ServerOption(log))
	s.srv = grpc.NewServer(opts...)
	nicepb.RegisterCoordinatorServer(s.srv, &rpc{s: s})
	s.states = &statexfer.Server{Src: s, Logger: log}
	nicepb.RegisterStateServiceServer(s.srv, s.states)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.srv, s.health)
	if cfg.HTTP != "" {
		if s.httpLis, err = net.Listen("tcp", cfg.HTTP); err != nil {
			return fail(fmt.Errorf("listening on %s: %w", cfg.HTTP, err))
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", s.serveHealthz)
		mux.HandleFunc("GET /readyz", s.serveReadyz)
		mux.Handle("GET /metrics", s.metricsHandler())
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
			b, err := json.Marshal(s.Status())
			if err != nil {
				// Never an empty 200: say what could not be encoded.
				http.Error(w, "status not encodable: "+err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(append(b, '\n'))
		})
		s.dash.routes(mux)
		// A client holds a connection only for bounded times.
		s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: rpcopt.MaxHeaderBytes}
		s.httpSrv.RegisterOnShutdown(s.dash.close)
	}
	s.updateStatus()
	s.refreshHealth()
	log.Info("coordinator ready", "grpc", adv, "step", st.Position.Step, "epoch", st.Position.Epoch+1, "config", st.Config.Hash(),
		"cluster_ca", cfg.Creds.Fingerprint())
	return s, nil
}

// resume loads the newest verifying checkpoint (returning its record), or
// builds the initial state.
func (s *Server) resume(c train.Config) (*train.State, *checkpoint.Info, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, corrupt, err := s.store.LoadNewestValid(ctx)
	for _, ce := range corrupt {
		s.log.Error("checkpoint skipped", "err", ce)
	}
	if errors.Is(err, checkpoint.ErrNoCheckpoint) {
		if err := c.Validate(); err != nil {
			return nil, nil, err
		}
		s.log.Info("no checkpoint: starting a new run", "config", c.Hash())
		var d train.Data
		if c.NeedsData() {
			if d, err = loadTrainingData(s.cfg.DataDir, c); err != nil {
				return nil, nil, err
			}
		}
		st, err := train.InitialState(c, d)
		return st, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading checkpoints: %w", err)
	}
	st, err := train.DecodeState(cp.Blob)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint at step %d: %w", cp.Step, err)
	}
	if st.Config.Hash() != c.Hash() {
		s.log.Warn("resuming with the checkpoint's configuration, not the flags'", "checkpoint", st.Config.Hash(), "flags", c.Hash())
	}
	if c.Epochs > st.Config.Epochs {
		st.Config.Epochs = c.Epochs
	}
	s.log.Info("resuming from checkpoint", "step", cp.Step, "epoch", st.Position.Epoch+1, "skipped_corrupt", len(corrupt))
	return st, &cp.Info, nil
}

// InmemSessions returns a dialer of sessions with this coordinator that
// stay in this process (workers in tests use it instead of gRPC).
func (s *Server) InmemSessions() session.Dialer { return session.Inmem((&rpc{s: s}).Session) }

// Addr is the coordinator's gRPC address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Advertised returns the gRPC address workers are told to reach: the
// configured one, with the port picked when it listened on port 0.
func (s *Server) Advertised() string { return s.advertise }

// HTTPAddr is the status HTTP address ("" if none).
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// Serve runs the coordinator until ctx ends: then it asks the workers to stop
// at the next step boundary, saves a final checkpoint (bounded wait), and
// stops everything it started. It fails when the state training reached is
// not stored because checkpoint writes failed or the wait ran out (the error
// says which checkpoint stands and why), or when the ledger could not be
// written and synced.
func (s *Server) Serve(ctx context.Context) error {
	serveErr := make(chan error, 2)
	go func() { serveErr <- s.srv.Serve(s.lis) }()
	if s.httpSrv != nil {
		go func() { serveErr <- s.httpSrv.Serve(s.httpLis) }()
	}
	switch {
	case s.cfg.Membership != nil:
		s.gossip = s.cfg.Membership
	case s.cfg.Gossip != nil:
		gc := *s.cfg.Gossip
		gc.Meta = membership.Meta{Role: membership.RoleCoordinator, GRPCAddr: s.advertise, Incarnation: s.incarnation}
		if gc.Creds == nil {
			gc.Creds = s.cfg.Creds
		}
		if gc.Logger == nil {
			gc.Logger = s.log
		}
		g, err := membership.Join(ctx, gc)
		if err != nil {
			s.closeAll()
			return fmt.Errorf("gossip: %w", err)
		}
		s.gossip = g
	}
	if s.gossip != nil {
		s.wg.Add(1)
		go s.watchGossip(s.gossip)
	}
	loopCtx, stopLoop := context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.loop(loopCtx)
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	wait := s.finalWait()
	timedOut := s.shutdown(wait)
	stopLoop()
	closeErr := s.closeAll()
	return errors.Join(err, s.finalCheckpointError(timedOut, wait), closeErr)
}

// finalWait is how long a stop waits for its final checkpoint.
func (s *Server) finalWait() time.Duration {
	if s.cfg.FinalCheckpointTimeout > 0 {
		return s.cfg.FinalCheckpointTimeout
	}
	return DefaultFinalCheckpointTimeout
}

// shutdown asks for a final snapshot at the next commit and waits for it at
// most wait; it reports whether the wait ran out.
func (s *Server) shutdown(wait time.Duration) (timedOut bool) {
	s.post(event{stop: true})
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.stopped:
		return false
	case <-t.C:
		s.log.Warn("no final checkpoint taken in time; the newest earlier one stands", "waited", wait)
		return true
	}
}

// closeAll stops everything; its error is the ledger's (not all written,
// synced and closed).
func (s *Server) closeAll() error {
	if s.srv != nil {
		done := make(chan struct{})
		go func() { s.srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			s.srv.Stop()
		}
		s.states.Wait()
	}
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.httpSrv.Shutdown(ctx)
		cancel()
	}
	if s.gossip != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.gossip.Leave(ctx)
		cancel()
		s.gossip.Shutdown()
	}
	s.wg.Wait()
	if s.writer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		s.writer.Close(ctx)
		cancel()
	}
	var ledgerErr error
	if s.ledger != nil {
		if ledgerErr = s.ledger.close(); ledgerErr != nil {
			s.log.Error("the ledger is not all on disk", "err", ledgerErr)
		}
	}
	if s.store != nil {
		s.store.Close()
	}
	return ledgerErr
}

func (s *Server) watchGossip(g membership.Membership) {
	defer s.wg.Done()
	for ev := range g.Events() {
		if ev.Kind == membership.EventLeave && ev.Member.Meta.Role == membership.RoleWorker {
			m := ev.Member
			s.post(event{gone: &m})
		}
	}
}

// post hands an event from a background goroutine to the loop, unless the
// loop has ended.
func (s *Server) post(ev event) {
	select {
	case s.events <- ev:
	case <-s.loopDone:
	}
}

// loop owns the machine: every event goes through it, one at a time.
func (s *Server) loop(ctx context.Context) {
	defer s.wg.Done()
	defer close(s.loopDone)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var out Output
		now := time.Now()
		select {
		case <-ctx.Done():
			for _, ss := range s.sessions {
				ss.cancel(errStopping)
			}
			return
		case <-tick.C:
			out = s.m.Tick(now)
		case ev := <-s.events:
			out = s.handle(now, ev)
		}
		s.apply(out)
		s.updateStatus()
		s.refreshHealth()
		s.retryFailedCheckpoint(now)
	}
}

func (s *Server) handle(now time.Time, ev event) Output {
	switch {
	case ev.attach != nil:
		out, err := s.m.Attach(now, ev.attach.id, ev.attach.addr, ev.attach.incarnation, ev.attach.lastGen)
		if err != nil {
			ev.attach.cancel(status.Error(codes.AlreadyExists, err.Error()))
			return out
		}
		if old := s.sessions[ev.attach.id]; old != nil {
			old.cancel(errReplaced)
		}
		s.sessions[ev.attach.id] = ev.attach
		return out
	case ev.detach != nil:
		if s.sessions[ev.detach.id] != ev.detach {
			return Output{} // an older session of a re-attached worker
		}
		delete(s.sessions, ev.detach.id)
		return s.m.Detach(now, ev.detach.id, ev.detach.incarnation, "session ended")
	case ev.gone != nil:
		id := ev.gone.Meta.WorkerID
		ss := s.sessions[id]
		if ss == nil || ss.incarnation != ev.gone.Meta.Incarnation {
			return Output{}
		}
		if quiet := now.Sub(time.Unix(0, ss.heard.Load())); quiet < time.Second {
			// Its session heartbeats right now: gossip is wrong (a node that
			// was cut off declared it dead and it never heard so to refute
			// it). The session is the better witness; if it fails, its end
			// detaches the worker.
			s.log.Warn("gossip says a worker is gone, but its session is alive: keeping it", "worker", id, "node", ev.gone.Name, "heard_ago", quiet.Round(time.Millisecond))
			return Output{}
		}
		ss.cancel(errGossipGone)
		delete(s.sessions, id)
		return s.m.Detach(now, id, ss.incarnation, "gossip: "+ev.gone.Name+" is gone")
	case ev.msg != nil:
		if s.sessions[ev.from.id] != ev.from {
			return Output{}
		}
		id := ev.from.id
		switch k := ev.msg.Kind.(type) {
		case *nicepb.WorkerMessage_Ready:
			return s.m.Ready(now, id, k.Ready)
		case *nicepb.WorkerMessage_Report:
			return s.m.Report(now, id, k.Report)
		case *nicepb.WorkerMessage_Eval:
			return s.m.Eval(now, id, k.Eval)
		case *nicepb.WorkerMessage_RingFailure:
			return s.m.RingFailure(now, id, k.RingFailure)
		case *nicepb.WorkerMessage_Snapshotted:
			return s.m.Snapshotted(now, id, k.Snapshotted)
		case *nicepb.WorkerMessage_Leave:
			return s.m.Leave(now, id, k.Leave.Reason, statexfer.FromPB(k.Leave.Position), k.Leave.StateDigest)
		}
	case ev.saved != nil:
		s.m.SetOwnState(ev.saved.pos, ev.saved.digest)
	case ev.stored != nil:
		return s.m.Stored(now, *ev.stored)
	case ev.stop:
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		if v := s.m.View(); v.Phase != Running && v.Phase != Preparing {
			// Nothing trains: what the workers hold is what the last
			// commit's checkpoint (or the hold's) took.
			s.stopWhenSaved()
			return Output{}
		}
		s.m.RequestStop()
	}
	return Output{}
}

func (s *Server) closeStopped() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stopped:
	default:
		close(s.stopped)
	}
}

// apply carries out a machine output.
func (s *Server) apply(out Output) {
	s.dash.noteLogs(time.Now(), out.Logs)
	for _, l := range out.Logs {
		s.log.Log(context.Background(), machineLogLevel(l), l)
	}
	for _, snd := range out.Sends {
		ss := s.sessions[snd.To]
		if ss == nil {
			continue
		}
		select {
		case ss.out <- snd.Msg:
		default:
			s.log.Warn("worker does not keep up with its messages; closing its session", "worker", snd.To)
			ss.cancel(errSlow)
		}
	}
	for _, id := range out.Disconnect {
		if ss := s.sessions[id]; ss != nil {
			ss.cancel(errDisconnect)
			delete(s.sessions, id)
		}
	}
	if c := out.Committed; c != nil {
		s.recordCommit(c)
	}
	if sc := out.Scored; sc != nil {
		s.recordScore(sc)
	}
	if r := out.Snapshot; r != nil {
		s.startSnapshot(r)
	}
	if s.m.View().Stopped {
		// Stopped at a step boundary, or every worker left first: once the
		// snapshots asked for are taken there is nothing more to wait for.
		s.stopWhenSaved()
	}
}

// stopWhenSaved completes a requested stop unless a snapshot is still
// being taken (its goroutine calls it again when done).
func (s *Server) stopWhenSaved() {
	s.mu.Lock()
	busy := s.snapping != nil || s.nextSnap != nil
	s.mu.Unlock()
	if !busy {
		s.closeStopped()
	}
}

// LedgerLine is one line of the ledger (ledger.jsonl): a committed step,
// who computed which shard of it, what the members reported, and when.
// `nice-coord verify` reads the same lines with replay.ReadLedger.
type LedgerLine struct {
	Generation  uint64  `json:"generation"`
	Step        int64   `json:"step"`
	Epoch       int     `json:"epoch"`
	StepInEpoch int     `json:"step_in_epoch"`
	Batch       int     `json:"batch"`
	Shards      []Shard `json:"shards"`
	Coordinator uint64  `json:"coordinator"`
	Snapshot    bool    `json:"snapshot,omitempty"`
	SumLL       float64 `json:"sum_ll"`
	// The digests let a replay find the first step it computes otherwise
	// (nice-coord verify).
	GradDigest   uint32  `json:"grad_digest"`
	ParamsDigest uint32  `json:"params_digest,omitempty"`
	UnixNano     int64   `json:"unix_nano"`
	Compute      float64 `json:"compute_seconds"`
	Allreduce    float64 `json:"allreduce_seconds"`
}

// recordCommit appends the commit to the ledger (synced when it carries a
// snapshot: the ledger is then durable up to each checkpoint) and updates
// the throughput figures.
func (s *Server) recordCommit(c *Commit) {
	b, err := json.Marshal(LedgerLine{Generation: c.Generation, Step: c.Position.Step, Epoch: c.Position.Epoch,
		StepInEpoch: c.Position.StepInEpoch, Batch: c.Batch, Shards: c.Shards, Coordinator: s.incarnation,
		Snapshot: c.Snapshot, SumLL: c.SumLL, GradDigest: c.GradDigest, ParamsDigest: c.ParamsDigest, UnixNano: time.Now().UnixNano(), Compute: finiteOr0(c.Compute), Allreduce: finiteOr0(c.Allreduce)})
	if err == nil {
		err = s.ledger.append(append(b, '\n'), c.Snapshot)
	} else {
		err = fmt.Errorf("encoding the ledger line: %w", err)
	}
	s.noteLedger(c.Position.Step, err)
	stats := s.m.View().Stats
	s.obs.observeCommit(c, stats.LastStepSeconds)
	s.dash.noteCommit(time.Now(), c, stats.LastStepSeconds)
	s.mu.Lock()
	st := &s.status
	n := float64(c.Batch)
	if sec := stats.LastStepSeconds; sec > 0 {
		sps := n / sec
		if st.SamplesPerSec == 0 {
			st.SamplesPerSec = sps
		} else {
			st.SamplesPerSec = 0.8*st.SamplesPerSec + 0.2*sps
		}
	}
	st.TrainNLL = -c.SumLL / n
	if ar := stats.LastAllreduce; ar > 0 && len(c.Shards) > 1 {
		k := float64(len(c.Shards))
		bytes := 4 * float64(s.params)
		st.BusBW = bytes / ar * 2 * (k - 1) / k / 1e9
	}
	s.mu.Unlock()
}

func (s *Server) recordScore(sc *nicepb.EpochScore) {
	r := train.EpochResult{Epoch: int(sc.Epoch), Step: sc.Step, TrainNLL: sc.TrainNll, TestLL: sc.TestLl, BitsPerDim: sc.BitsPerDim}
	s.mu.Lock()
	r.SamplesPerSec = s.status.SamplesPerSec
	// An epoch scored again (its checkpoint was resumed before its score
	// was kept) replaces its entry.
	s.scores = slices.DeleteFunc(s.scores, func(e train.EpochResult) bool { return e.Epoch == r.Epoch })
	s.scores = MergeScores(s.scores, []train.EpochResult{r})
	kept := slices.Clone(s.scores)
	s.mu.Unlock()
	s.dash.noteScore(time.Now(), r)
	if err := saveScores(s.cfg.StateDir, s.cfg.Train.Hash(), kept); err != nil {
		s.log.Warn("epoch scores not kept on disk; the checkpoints still carry them", "err", err)
	}
	s.log.Info("epoch scored", "epoch", r.Epoch, "test_ll", fmt.Sprintf("%.2f", r.TestLL), "bits_per_dim", fmt.Sprintf("%.4f", r.BitsPerDim))
}

// loadTrainingData reads MNIST for a run whose initial state is fitted to it.
func loadTrainingData(dir string, c train.Config) (train.Data, error) {
	found, err := mnist.FindDir(dir)
	if err == nil {
		var tr, te *mnist.Set
		if tr, te, err = mnist.Load(found); err == nil {
			return train.SplitData(c, tr, te), nil
		}
	}
	return train.Data{}, fmt.Errorf("a new run with --init %s fits its initial log-scales to the training images, so the coordinator reads MNIST once (pass --data DIR, or --init zero): %w", c.Init, err)
}
