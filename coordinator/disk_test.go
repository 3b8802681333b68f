package coordinator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/clustertest"
	"github.com/nice-flow/nice/internal/testwait"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// statusWait bounds a wait on the status: three minutes, against a hang on
// a loaded machine.
const statusWait = 3 * time.Minute

// The tests of this file run a coordinator and one worker in this process
// (in-memory sessions, the state fetched over loopback gRPC) on a disk that
// fills and is freed again, and wait on the coordinator's status.

// fullDisk fails the operations it is offered while it is full.
type fullDisk struct{ full atomic.Bool }

func (d *fullDisk) MaybeError(op checkpoint.Op) error {
	if d.full.Load() {
		return fmt.Errorf("%v of step %d: %w", op.Kind, op.Step, syscall.ENOSPC)
	}
	return nil
}

// transcript interleaves, in order, the coordinator's log lines and the
// ledger lines it writes (both come from its loop goroutine), and the
// ledger file's syncs.
type transcript struct {
	mu      sync.Mutex
	entries []string
}

func (tr *transcript) add(e string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.entries = append(tr.entries, e)
}

func (tr *transcript) all() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.entries...)
}

// logWriter is where the coordinator's logger writes.
type logWriter struct{ tr *transcript }

func (w logWriter) Write(p []byte) (int, error) {
	w.tr.add("log: " + strings.TrimSpace(string(p)))
	return len(p), nil
}

// recordedLedger is the real ledger file, seen by the transcript; while its
// disk is full a write takes part of a line and fails, and syncs fail.
type recordedLedger struct {
	f    *os.File
	tr   *transcript
	disk *fullDisk
}

// openLedger opens the ledger file in dir as a recordedLedger.
func openLedger(t *testing.T, dir string, tr *transcript, disk *fullDisk) *recordedLedger {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "ledger.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return &recordedLedger{f: f, tr: tr, disk: disk}
}

func (l *recordedLedger) Write(p []byte) (int, error) {
	if l.disk.full.Load() {
		n, _ := l.f.Write(p[:len(p)/2])
		return n, fmt.Errorf("writing the ledger: %w", syscall.ENOSPC)
	}
	n, err := l.f.Write(p)
	l.tr.add("ledger: " + string(p[:n])) // one entry per write, of one line or more
	return n, err
}

func (l *recordedLedger) Sync() error {
	if l.disk.full.Load() {
		return fmt.Errorf("syncing the ledger: %w", syscall.EIO)
	}
	l.tr.add("sync")
	return l.f.Sync()
}

func (l *recordedLedger) Close() error {
	l.tr.add("close")
	return l.f.Close()
}

// run is a coordinator and one worker serving until stop.
type run struct {
	srv      *coordinator.Server
	w        *worker.Worker
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	serveErr error
}

// tinyRun is a small model on MNIST that holds at stopAt, checkpointing
// every 10 steps.
func tinyRun(t *testing.T, dir string, stopAt int64) coordinator.Config {
	t.Helper()
	if testing.Short() {
		t.Skip("trains a small model on MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	tc := train.PaperConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.StopAt = stopAt
	mc.CheckpointEvery = 10
	mc.SaveRetry = 100 * time.Millisecond
	return coordinator.Config{Train: tc, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", StateDir: dir, Machine: mc}
}

func start(t *testing.T, cfg coordinator.Config) *run {
	t.Helper()
	srv, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{srv: srv, cancel: cancel}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.serveErr = srv.Serve(ctx) }()
	wc := worker.DefaultConfig()
	wc.ID, wc.Coordinator, wc.Sessions = "a", "", srv.InmemSessions()
	if r.w, err = worker.New(wc); err != nil {
		cancel()
		r.wg.Wait()
		t.Fatal(err)
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.w.Run(ctx) }()
	t.Cleanup(func() { r.stop() }) // if the test ends early; before the leak check
	return r
}

// checkLeaks checks, once the test and its clean-ups are done, that every
// goroutine it started has ended (flow's loop pool lives for the process).
func checkLeaks(t *testing.T) {
	t.Cleanup(func() {
		goleak.VerifyNone(t, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
	})
}

// stop ends the run and returns what Serve returned; it may be called again.
func (r *run) stop() error {
	r.cancel()
	r.wg.Wait()
	return r.serveErr
}

// health asks GET /healthz and the gRPC health service.
// healthSeen is what the coordinator's two health endpoints answer.
type healthSeen struct {
	Code int
	Body string
	// GRPC holds the gRPC health of the server ("") and of the
	// coordinator service, in that order.
	GRPC [2]healthpb.HealthCheckResponse_ServingStatus
	Err  string
}

func health(srv *coordinator.Server) (h healthSeen) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + srv.HTTPAddr() + "/healthz")
	if err != nil {
		h.Err = err.Error()
		return h
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		h.Err = err.Error()
		return h
	}
	h.Code, h.Body = resp.StatusCode, string(b)
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.Err = err.Error()
		return h
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, service := range []string{"", nicepb.Coordinator_ServiceDesc.ServiceName} {
		hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			h.Err = fmt.Sprintf("gRPC health of %q: %v", service, err)
			return h
		}
		h.GRPC[i] = hr.Status
	}
	return h
}

// checkDegraded waits until /healthz answers 503 naming mentions and the
// gRPC health of the server and of the coordinator service both say
// NOT_SERVING. The gRPC verdict follows the status a moment later (it is
// set after the problem is recorded, one service after the other), so the
// test waits for it rather than reading it once.
func checkDegraded(t *testing.T, srv *coordinator.Server, mentions string) {
	t.Helper()
	testwait.For(t, statusWait, "health degraded over HTTP and gRPC", func() healthSeen { return health(srv) }, func(h healthSeen) bool {
		return h.Err == "" && h.Code == http.StatusServiceUnavailable && strings.Contains(h.Body, mentions) &&
			h.GRPC == [2]healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING}
	})
}

func checkHealthy(t *testing.T, srv *coordinator.Server) {
	t.Helper()
	testwait.For(t, statusWait, "health ok over HTTP and gRPC", func() healthSeen { return health(srv) }, func(h healthSeen) bool {
		return h.Err == "" && h.Code == http.StatusOK && h.Body == "ok\n" &&
			h.GRPC == [2]healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING}
	})
}

// A checkpoint store whose disk is full: the failure shows in the status
// and makes health degraded; each failure has the next commit take a new
// checkpoint; once the disk is freed a checkpoint is written, the problem is
// cleared, and the run held at step 50 resumes from that step.
func TestCheckpointWriteFailuresShowAndClear(t *testing.T) {
	dir := t.TempDir()
	cfg := tinyRun(t, dir, 50)
	checkLeaks(t)
	disk := &fullDisk{}
	disk.full.Store(true)
	store, err := checkpoint.OpenBolt(filepath.Join(dir, "nice.db"), checkpoint.BoltOptions{
		Injector: checkpoint.OnKind(checkpoint.OpPutChunk, disk)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &transcript{}
	cfg.Store = store
	cfg.Logger = slog.New(slog.NewTextHandler(logWriter{tr}, nil))
	cfg.Ledger = openLedger(t, dir, tr, &fullDisk{})
	r := start(t, cfg)

	st := testwait.For(t, statusWait, "checkpoint error", r.srv.Status, func(st coordinator.Status) bool { return st.LastCheckpointError != nil })
	if p := st.LastCheckpointError; !strings.Contains(p.Error, "no space left on device") || p.Step < 10 || p.Time.IsZero() {
		t.Errorf("last_checkpoint_error %+v: want the write's error, its step and when", p)
	}
	if !strings.HasPrefix(st.Health, "degraded: checkpoint writes fail") {
		t.Errorf("status health %q", st.Health)
	}
	checkDegraded(t, r.srv, "checkpoint writes fail")

	disk.full.Store(false)
	st = testwait.For(t, statusWait, "hold at step 50 with its checkpoint, healthy", r.srv.Status, func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == 50 && st.LastCheckpointStep == 50 && st.LastCheckpointError == nil
	})
	if st.Health != "ok" {
		t.Errorf("status health %q after recovery", st.Health)
	}
	checkHealthy(t, r.srv)

	// Each retry the loop orders is taken by the commit that follows it.
	entries := tr.all()
	retries := 0
	for i, e := range entries {
		if !strings.Contains(e, "the next commit takes a new checkpoint") {
			continue
		}
		for _, next := range entries[i+1:] {
			if strings.HasPrefix(next, "ledger: ") {
				if !strings.Contains(next, `"snapshot":true`) {
					t.Errorf("the commit after a retry was asked carries no snapshot: %s", next)
				}
				retries++
				break
			}
		}
	}
	if retries == 0 {
		t.Errorf("no failed checkpoint was retried by a commit; the coordinator's log and ledger:\n%s", strings.Join(entries, "\n"))
	}
	want := r.w.State().Digest()
	if err := r.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	// Nothing is lost: the newest stored checkpoint is the state the worker
	// holds, and a coordinator started on the folder resumes from it.
	cfg.Store, cfg.Ledger, cfg.Logger, cfg.HTTP = nil, nil, nil, ""
	srv, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st := srv.Status(); st.Step != 50 || st.LastCheckpointStep != 50 {
		t.Errorf("restarted coordinator at step %d, checkpoint %d; want 50 and 50", st.Step, st.LastCheckpointStep)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Serve(ctx); err != nil {
		t.Fatalf("restarted coordinator: %v", err)
	}
	bolt, err := checkpoint.OpenBolt(filepath.Join(dir, "nice.db"), checkpoint.BoltOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	cp, _, err := bolt.LoadNewestValid(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := train.DecodeState(cp.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Step != 50 || got.Digest() != want {
		t.Errorf("newest checkpoint at step %d with digest %x; the worker holds step 50 with %x", cp.Step, got.Digest(), want)
	}
}

// A ledger on a full disk: ledger_error shows and health is degraded; once
// the disk is freed the lines kept meanwhile are written, the problem is
// cleared, and the ledger holds every committed step once; it was synced
// after each line that carries a snapshot, and at the stop.
func TestLedgerWriteFailuresShowAndClear(t *testing.T) {
	dir := t.TempDir()
	cfg := tinyRun(t, dir, 30)
	checkLeaks(t)
	disk := &fullDisk{}
	disk.full.Store(true)
	tr := &transcript{}
	cfg.Ledger = openLedger(t, dir, tr, disk)
	r := start(t, cfg)

	st := testwait.For(t, statusWait, "ledger error", r.srv.Status, func(st coordinator.Status) bool { return st.LedgerError != nil })
	if p := st.LedgerError; !strings.Contains(p.Error, "no space left on device") || p.Time.IsZero() {
		t.Errorf("ledger_error %+v: want the write's error and when", p)
	}
	checkDegraded(t, r.srv, "ledger writes fail")

	disk.full.Store(false)
	testwait.For(t, statusWait, "hold at step 30 with the ledger written", r.srv.Status, func(st coordinator.Status) bool {
		return st.Phase == "holding" && st.Step == 30 && st.LastCheckpointStep == 30 && st.LedgerError == nil
	})
	checkHealthy(t, r.srv)
	if err := r.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	b, err := os.ReadFile(filepath.Join(dir, "ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var ledger []clustertest.LedgerEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e clustertest.LedgerEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("ledger line %q: %v", sc.Text(), err)
		}
		ledger = append(ledger, e)
	}
	n, err := clustertest.CheckLedger(ledger, mnist.TrainSize, cfg.Train.Batch, cfg.Train.Seed)
	if err != nil || n != 30 {
		t.Fatalf("ledger checks %d steps (want 30): %v", n, err)
	}
	entries := tr.all()
	if k := len(entries); k < 2 || entries[k-2] != "sync" || entries[k-1] != "close" {
		t.Errorf("the ledger was not synced, then closed, at the stop: ends with %v", entries[max(0, k-3):])
	}
	for i, e := range entries {
		if strings.HasPrefix(e, "ledger: ") && strings.Contains(e, `"snapshot":true`) && (i+1 == len(entries) || entries[i+1] != "sync") {
			t.Errorf("a write with a line that carries a snapshot was not synced at once: %s", e)
		}
	}
}

// A coordinator whose ledger cannot be synced at its stop says so.
func TestServeFailsWhenTheLedgerIsNotSyncedAtTheStop(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	disk := &fullDisk{}
	disk.full.Store(true)
	tc := train.PaperConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", StateDir: dir, Machine: coordinator.DefaultMachine(),
		Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), Ledger: openLedger(t, dir, &transcript{}, disk)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = srv.Serve(ctx)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "syncing the ledger") {
		t.Fatalf("Serve: %v; want the ledger's sync error", err)
	}
}
