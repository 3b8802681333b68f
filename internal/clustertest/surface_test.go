package clustertest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/logbuf"
	"github.com/nice-flow/nice/internal/membership"
	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/internal/testwait"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
	"github.com/nice-flow/nice/worker"
)

// TestSurfaceCredentials runs a coordinator and three workers in this
// process with the cluster's credentials (mutual TLS on every gRPC
// connection, encrypted gossip), checks that they train (sessions, ring,
// snapshot fetch, a newcomer fetching the state from a peer), and then
// knocks on every network-facing surface as each column's prober would. It
// logs the outcome as a markdown table and asserts every cell.
//
// Rows are surfaces, columns are what a prober does differently. A column
// about messages rather than credentials (oversized, NaN, wrong size, stale
// generation, non-member) keeps the cluster's credentials, sets a field of
// column that the rows' probes read to alter what they send, and adds its
// expected cells to surfaceWant.
func TestSurfaceCredentials(t *testing.T) {
	e := startSecureCluster(t)
	cols := credentialColumns(t, e)
	rows := surfaces()
	want := surfaceWant()

	var table strings.Builder
	table.WriteString("| surface |")
	for _, c := range cols {
		table.WriteString(" " + c.name + " |")
	}
	table.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, r := range rows {
		table.WriteString("| " + r.name + " |")
		for _, c := range cols {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			got := r.probe(ctx, e, c)
			cancel()
			w, ok := want[r.name][c.name]
			switch {
			case !ok:
				t.Errorf("%s × %s: no expectation in surfaceWant", r.name, c.name)
			case got.accepted != w.accepted:
				t.Errorf("%s × %s: %s, want %s", r.name, c.name, got, verdict(w.accepted))
			case !strings.Contains(got.text, w.has):
				t.Errorf("%s × %s: %s; want the text to contain %q", r.name, c.name, got, w.has)
			}
			table.WriteString(" " + strings.ReplaceAll(got.String(), "|", `\|`) + " |")
		}
		table.WriteString("\n")
	}
	t.Logf("network-facing surfaces with credentials (refused: what the prober saw):\n\n%s", table.String())

	// Nothing that was refused got in: the coordinator knows only its own
	// workers, its gossip only itself, and both kinds of server logged the
	// refusals they made.
	if st := e.srv.Status(); len(st.Workers) != len(e.workers) {
		t.Errorf("the coordinator lists %d workers after the probes, want its %d: %+v", len(st.Workers), len(e.workers), st.Workers)
	}
	e.coordLog.WaitFor(t, 0, "refused a connection at the TLS handshake", 30*time.Second)
	e.coordLog.WaitFor(t, 0, "refused gossip: the two ends do not share this cluster's gossip key", 30*time.Second)
	e.workerLog.WaitFor(t, 0, "refused a connection at the TLS handshake", 30*time.Second)
}

// outcome is what one probe saw.
type outcome struct {
	accepted bool   // the service answered (with data or its own error)
	text     string // what it answered, or why the connection was refused
}

func (o outcome) String() string {
	text := o.text
	if len(text) > 160 {
		text = text[:157] + "..."
	}
	return verdict(o.accepted) + ": " + text
}

func verdict(accepted bool) string {
	if accepted {
		return "accepted"
	}
	return "refused"
}

// expect is a cell of the table: the verdict, and text the outcome must
// contain.
type expect struct {
	accepted bool
	has      string
}

// column is one kind of prober.
type column struct {
	name string
	// dial is the transport security of a gRPC prober.
	dial grpc.DialOption
	// gossip is the credentials of a gossip prober (nil: no key).
	gossip *creds.Bundle
}

// credentialColumns are the probers of this test: one with the cluster's
// credentials (so that every refusal elsewhere is shown not to be a broken
// probe), one with none, one with another cluster's, and one with the
// cluster's certificate but another gossip key.
func credentialColumns(t *testing.T, e *secureCluster) []column {
	t.Helper()
	// Another cluster's prober at its most insistent: it does not check our
	// server's certificate and presents its own whatever CAs the server
	// names (Go's client would send none), so the refusal is our server's
	// verdict on its certificate.
	foreign := e.theirs.ClientTLS()
	foreign.InsecureSkipVerify = true
	theirCert := foreign.Certificates[0]
	foreign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &theirCert, nil }
	// Our certificate with their gossip key: the folder's files mixed.
	mixed := filepath.Join(t.TempDir(), "mixed")
	if _, err := e.ours.Write(mixed, creds.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if _, err := e.theirs.Write(other, creds.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(other, creds.GossipKeyFile), filepath.Join(mixed, creds.GossipKeyFile)); err != nil {
		t.Fatal(err)
	}
	ourCertTheirKey, err := creds.Load(mixed)
	if err != nil {
		t.Fatal(err)
	}
	return []column{
		{name: "cluster credentials", dial: e.ours.DialOption(), gossip: e.ours},
		{name: "no credentials", dial: (*creds.Bundle)(nil).DialOption(), gossip: nil},
		{name: "wrong CA", dial: grpc.WithTransportCredentials(credentials.NewTLS(foreign)), gossip: e.theirs},
		{name: "wrong gossip key", dial: ourCertTheirKey.DialOption(), gossip: ourCertTheirKey},
	}
}

// surface is one row: how to knock on it.
type surface struct {
	name  string
	probe func(ctx context.Context, e *secureCluster, c column) outcome
}

func surfaces() []surface {
	return []surface{
		{"Coordinator.Session", probeSession},
		{"Coordinator.Status", probeStatus},
		{"Coordinator.Checkpoints", probeCheckpoints},
		{"StateService.FetchState (coordinator)", func(ctx context.Context, e *secureCluster, c column) outcome {
			return probeFetch(ctx, e.srv.Addr(), e.held, c)
		}},
		{"StateService.FetchState (worker)", func(ctx context.Context, e *secureCluster, c column) outcome {
			return probeFetch(ctx, e.workers[0].Addr(), e.held, c)
		}},
		{"RingService.Exchange (worker)", probeRing},
		{"Health.Check (coordinator)", func(ctx context.Context, e *secureCluster, c column) outcome {
			return probeHealth(ctx, e.srv.Addr(), c)
		}},
		{"Health.Check (worker)", func(ctx context.Context, e *secureCluster, c column) outcome {
			return probeHealth(ctx, e.workers[0].Addr(), c)
		}},
		{"gossip (memberlist)", probeGossip},
		{"HTTP status port", probeHTTP},
		{"HTTP port (worker)", probeWorkerHTTP},
	}
}

// surfaceWant is the expected table. A gRPC refusal is Unavailable: the
// connection ended at the TLS handshake, before any service saw a byte.
func surfaceWant() map[string]map[string]expect {
	refused := expect{false, "Unavailable"}
	grpcRow := func(answer string) map[string]expect {
		ok := expect{true, answer}
		return map[string]expect{"cluster credentials": ok, "no credentials": refused, "wrong CA": refused,
			// The gossip key is not a gRPC credential: the certificate is ours.
			"wrong gossip key": ok}
	}
	return map[string]map[string]expect{
		// An empty Hello, so that the coordinator's own answer shows the
		// session reached it without attaching anything.
		"Coordinator.Session":                   grpcRow("InvalidArgument"),
		"Coordinator.Status":                    grpcRow("phase holding"),
		"Coordinator.Checkpoints":               grpcRow("(verified true)"),
		"StateService.FetchState (coordinator)": grpcRow("bytes of state at step"),
		"StateService.FetchState (worker)":      grpcRow("bytes of state at step"),
		// A stream without its hello, refused by the ring itself.
		"RingService.Exchange (worker)": grpcRow("InvalidArgument: bad frame"),
		"Health.Check (coordinator)":    grpcRow("SERVING"),
		"Health.Check (worker)":         grpcRow("SERVING"),
		"gossip (memberlist)": {
			"cluster credentials": {true, "joined"},
			"no credentials":      {false, "remote state is encrypted and encryption is not configured"},
			"wrong CA":            {false, "no installed keys could decrypt the message"},
			"wrong gossip key":    {false, "no installed keys could decrypt the message"},
		},
		// Plain HTTP by design, read-only: see the README's security model.
		"HTTP status port": {
			"cluster credentials": {true, "read-only"}, "no credentials": {true, "read-only"},
			"wrong CA": {true, "read-only"}, "wrong gossip key": {true, "read-only"},
		},
		"HTTP port (worker)": {
			"cluster credentials": {true, "read-only"}, "no credentials": {true, "read-only"},
			"wrong CA": {true, "read-only"}, "wrong gossip key": {true, "read-only"},
		},
	}
}

// grpcOutcome classifies a gRPC error: Unavailable is a connection that
// never reached a service; anything else is the service's own answer.
func grpcOutcome(err error, okText string) outcome {
	switch {
	case err == nil:
		return outcome{true, okText}
	case status.Code(err) == codes.Unavailable:
		return outcome{false, fmt.Sprintf("%s: %s", codes.Unavailable, status.Convert(err).Message())}
	default:
		st := status.Convert(err)
		return outcome{true, fmt.Sprintf("the service answered %s: %s", st.Code(), st.Message())}
	}
}

func dial(t testing.TB, addr string, c column) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, c.dial, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		t.Fatalf("client for %s: %v", addr, err)
	}
	return conn
}

func probeSession(ctx context.Context, e *secureCluster, c column) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	stream, err := nicepb.NewCoordinatorClient(conn).Session(ctx)
	if err == nil {
		err = stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{}}})
	}
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil {
		return outcome{true, "the coordinator welcomed an empty Hello"}
	}
	return grpcOutcome(err, "")
}

func probeStatus(ctx context.Context, e *secureCluster, c column) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	r, err := nicepb.NewCoordinatorClient(conn).Status(ctx, &nicepb.StatusRequest{})
	if err != nil {
		return grpcOutcome(err, "")
	}
	var st coordinator.Status
	if err := json.Unmarshal(r.Json, &st); err != nil {
		return outcome{true, "a status that does not parse: " + err.Error()}
	}
	return outcome{true, fmt.Sprintf("phase %s, step %d, %d workers", st.Phase, st.Step, len(st.Workers))}
}

func probeCheckpoints(ctx context.Context, e *secureCluster, c column) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	r, err := nicepb.NewCoordinatorClient(conn).Checkpoints(ctx, &nicepb.CheckpointsRequest{})
	if err != nil {
		return grpcOutcome(err, "")
	}
	var list []coordinator.CheckpointInfo
	if err := json.Unmarshal(r.Json, &list); err != nil || len(list) == 0 {
		return outcome{true, fmt.Sprintf("a listing of %d checkpoints (%v)", len(list), err)}
	}
	last := list[len(list)-1]
	return outcome{true, fmt.Sprintf("%d checkpoints, the last at step %d (verified %v)", len(list), last.Step, last.Verified)}
}

func probeFetch(ctx context.Context, addr string, pos *nicepb.Position, c column) outcome {
	conn, err := grpc.NewClient(addr, c.dial, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		return outcome{false, err.Error()}
	}
	defer conn.Close()
	blob, err := statexfer.Fetch(ctx, conn, statexfer.Request{Source: addr, Position: pos, Size: statexfer.Expect{Min: 1, Max: 1 << 30}})
	return grpcOutcome(err, fmt.Sprintf("%d bytes of state at step %d", len(blob), pos.Step))
}

// probeRing opens an Exchange stream that does not announce itself (no
// RingHello in its metadata, see ring.proto): a worker's ring refuses it
// before reading a frame, which shows the stream reached the ring.
func probeRing(ctx context.Context, e *secureCluster, c column) outcome {
	conn := dial(e.t, e.workers[0].Addr(), c)
	defer conn.Close()
	stream, err := nicepb.NewRingServiceClient(conn).Exchange(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil {
		return outcome{true, "the worker accepted a stream without a hello"}
	}
	return grpcOutcome(err, "")
}

func probeHealth(ctx context.Context, addr string, c column) outcome {
	conn, err := grpc.NewClient(addr, c.dial)
	if err != nil {
		return outcome{false, err.Error()}
	}
	defer conn.Close()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return grpcOutcome(err, "")
	}
	return outcome{true, r.Status.String()}
}

// probeGossip starts a memberlist node with the column's key and joins the
// coordinator's gossip through it. A refused node retries: its first failed
// attempt is the verdict.
func probeGossip(ctx context.Context, e *secureCluster, c column) outcome {
	cfg := membership.DefaultConfig()
	cfg.BindAddr, cfg.BindPort = "127.0.0.1", 0
	cfg.Seeds = []string{e.gossipAddr}
	cfg.Meta = membership.Meta{Role: membership.RoleWorker, WorkerID: "gossip-prober", GRPCAddr: "127.0.0.1:1"}
	cfg.Creds = c.gossip
	logs := &logbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	joined := make(chan error, 1)
	var g *membership.Gossip
	go func() {
		var err error
		g, err = membership.Join(jctx, cfg)
		joined <- err
	}()
	select {
	case err := <-joined:
		if err != nil {
			return outcome{false, err.Error()}
		}
		n := len(g.Members())
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer lcancel()
		g.Leave(lctx)
		g.Shutdown()
		return outcome{true, fmt.Sprintf("joined: %d members", n)}
	case <-logs.Seen(jctx, 0, "joining cluster failed"):
		cancel()
		err := <-joined
		if err == nil {
			g.Shutdown()
			return outcome{true, "joined after a failed attempt"}
		}
		msg := err.Error()
		if i := strings.Index(msg, "(last: "); i >= 0 {
			msg = strings.TrimSuffix(msg[i+len("(last: "):], ")")
		}
		return outcome{false, msg}
	}
}

// probeHTTP reads the status over plain HTTP (no credentials apply) and
// checks that the port offers nothing but reading.
func probeHTTP(ctx context.Context, e *secureCluster, _ column) outcome {
	return probeReadOnly(ctx, e.srv.HTTPAddr(), "/status")
}

// probeWorkerHTTP reads a worker's /metrics and tries to post to it.
func probeWorkerHTTP(ctx context.Context, e *secureCluster, _ column) outcome {
	return probeReadOnly(ctx, e.workers[0].HTTPAddr(), "/metrics")
}

func probeReadOnly(ctx context.Context, addr, path string) outcome {
	get, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return outcome{false, err.Error()}
	}
	resp, err := http.DefaultClient.Do(get)
	if err != nil {
		return outcome{false, err.Error()}
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	post, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, strings.NewReader("{}"))
	if err != nil {
		return outcome{false, err.Error()}
	}
	presp, err := http.DefaultClient.Do(post)
	if err != nil {
		return outcome{false, err.Error()}
	}
	presp.Body.Close()
	if resp.StatusCode != http.StatusOK || presp.StatusCode != http.StatusMethodNotAllowed {
		return outcome{true, fmt.Sprintf("GET %s %d, POST %s %d: not read-only", path, resp.StatusCode, path, presp.StatusCode)}
	}
	return outcome{true, fmt.Sprintf("plain HTTP, read-only: GET %s 200 (%d bytes), POST 405", path, len(body))}
}

// secureCluster is a coordinator and its workers in this process, all with
// the same credentials, holding at a step.
type secureCluster struct {
	t            *testing.T
	ours, theirs *creds.Bundle
	srv          *coordinator.Server
	workers      []*worker.Worker
	gossipAddr   string
	held         *nicepb.Position // the position training holds at
	coordLog     *logbuf.Buffer
	workerLog    *logbuf.Buffer
}

// startSecureCluster starts a coordinator (gRPC, HTTP and gossip on
// loopback) and two workers with the cluster's credentials, trains to a
// hold at step 3 with its checkpoint, then adds a third worker, which must
// fetch the state from a peer; everything over mutual TLS.
func startSecureCluster(t *testing.T) *secureCluster {
	t.Helper()
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	// Registered first, so it runs after every other cleanup: flow's loop
	// pool lives for the process; everything else must end (memberlist may
	// take a probe interval to let its last goroutines go).
	t.Cleanup(func() {
		if err := testwait.Poll(10*time.Second, "goroutines to end", func() error {
			return goleak.Find(goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
		}); err != nil {
			t.Error(err)
		}
	})
	e := &secureCluster{t: t, coordLog: &logbuf.Buffer{}, workerLog: &logbuf.Buffer{}}
	var err error
	if e.ours, err = creds.Generate(time.Now()); err != nil {
		t.Fatal(err)
	}
	if e.theirs, err = creds.Generate(time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coordinator log:\n%s\nworker logs:\n%s", e.coordLog, e.workerLog)
		}
	})

	tc := train.DefaultConfig()
	tc.Model = flow.Config{Dim: 784, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	tc.Batch = 256
	mc := coordinator.DefaultMachine()
	mc.Settle = 100 * time.Millisecond
	mc.StopAt = 3
	gc := membership.DefaultConfig()
	gc.BindAddr, gc.BindPort = "127.0.0.1", FreePort(t)
	e.gossipAddr = fmt.Sprintf("127.0.0.1:%d", gc.BindPort)
	e.srv, err = coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", StateDir: t.TempDir(),
		Machine: mc, Gossip: &gc, Creds: e.ours, Logger: slog.New(slog.NewTextHandler(e.coordLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); e.srv.Serve(ctx) }()
	addWorker := func(id string) {
		cfg := worker.DefaultConfig()
		cfg.ID, cfg.Coordinator, cfg.Creds, cfg.HTTP = id, e.srv.Addr(), e.ours, "127.0.0.1:0"
		cfg.Logger = slog.New(slog.NewTextHandler(e.workerLog, &slog.HandlerOptions{Level: slog.LevelDebug})) // "fetched state" is debug
		w, err := worker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		e.workers = append(e.workers, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	addWorker("a")
	addWorker("b")
	st := e.waitHeld(t, 2)
	addWorker("c")
	st = e.waitHeld(t, 3)
	e.held = &nicepb.Position{Step: st.Step, Epoch: int32(st.Epoch - 1), StepInEpoch: int32(st.StepInEpoch)}
	if !strings.Contains(e.workerLog.String(), "fetched state") {
		t.Fatalf("the third worker did not fetch the state:\n%s", e.workerLog)
	}
	if a, c := e.workers[0].State(), e.workers[2].State(); a.Digest() != c.Digest() {
		t.Fatal("the newcomer holds another state than the others")
	}
	return e
}

// waitHeld waits until training holds at step 3 with its checkpoint and n
// workers training.
func (e *secureCluster) waitHeld(t *testing.T, n int) coordinator.Status {
	t.Helper()
	return testwait.For(t, 2*time.Minute, fmt.Sprintf("a hold at step 3 with %d workers training", n), e.srv.Status, func(st coordinator.Status) bool {
		training := 0
		for _, w := range st.Workers {
			if w.State == string(coordinator.Training) && w.Rank >= 0 {
				training++
			}
		}
		return st.Phase == "holding" && st.Step == 3 && st.LastCheckpointStep == 3 && training == n
	})
}
