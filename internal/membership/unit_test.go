package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"

	"github.com/nice-flow/nice/internal/testwait"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := settledLeaks(5 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// settledLeaks reports goroutines still running after up to wait. The wait
// is needed because memberlist's Shutdown does not wait for a probe in
// flight: probeNode blocks until its ack timer fires (up to ProbeInterval)
// and then returns. That is bounded, not a leak, but it outlasts goleak's own
// retries (well under a second), so keep asking until the deadline.
func settledLeaks(wait time.Duration, opts ...goleak.Option) error {
	return testwait.Poll(wait, "goroutines to end", func() error { return goleak.Find(opts...) })
}

// testLogger logs into the test's output until the test ends, and drops
// what comes later: memberlist goroutines may still log for a moment after
// Shutdown (see settledLeaks), and writing to a finished test panics.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{out: t.Output()}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	out  io.Writer
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	return w.out.Write(p)
}

func TestMetaEncode(t *testing.T) {
	cases := []struct {
		name    string
		meta    Meta
		wantErr error
	}{
		{"worker", Meta{Role: RoleWorker, WorkerID: "3", GRPCAddr: "10.0.0.3:9000", Incarnation: 42}, nil},
		{"coordinator", Meta{Role: RoleCoordinator, GRPCAddr: "coord:9000", Incarnation: 1}, nil},
		{"unknown role", Meta{Role: "boss", GRPCAddr: "a:1"}, ErrInvalidMeta},
		{"worker without id", Meta{Role: RoleWorker, GRPCAddr: "a:1"}, ErrInvalidMeta},
		{"no grpc address", Meta{Role: RoleCoordinator}, ErrInvalidMeta},
		{"too large", Meta{Role: RoleWorker, WorkerID: strings.Repeat("w", 500), GRPCAddr: "a:1"}, ErrMetaTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.meta.Encode()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Encode: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if len(b) > MaxMetaSize {
				t.Fatalf("encoded %d bytes", len(b))
			}
			got, err := DecodeMeta(b)
			if err != nil || got != tc.meta {
				t.Fatalf("DecodeMeta = %+v, %v; want %+v", got, err, tc.meta)
			}
		})
	}
	for _, bad := range []string{"", "{", `{"v":2,"role":"worker"}`, "\x00\x01"} {
		if _, err := DecodeMeta([]byte(bad)); !errors.Is(err, ErrInvalidMeta) {
			t.Errorf("DecodeMeta(%q): %v, want ErrInvalidMeta", bad, err)
		}
	}
}

func TestConfig(t *testing.T) {
	meta := Meta{Role: RoleWorker, WorkerID: "7", GRPCAddr: "127.0.0.1:9000"}
	now := time.Unix(0, 12345)
	mod := func(f func(*Config)) Config {
		c := DefaultConfig()
		c.Meta = meta
		c.AdvertiseAddr = "127.0.0.1"
		f(&c)
		return c.withDefaults(now)
	}
	if err := mod(func(*Config) {}).Validate(); err != nil {
		t.Fatalf("defaults with an advertise address: %v", err)
	}
	c := mod(func(c *Config) { c.BindAddr = "127.0.0.1"; c.AdvertiseAddr = "" })
	if err := c.Validate(); err != nil || c.AdvertiseAddr != "127.0.0.1" {
		t.Errorf("specific bind address should become the advertise address: %q, %v", c.AdvertiseAddr, err)
	}
	if c.Meta.Incarnation != 12345 || !strings.HasPrefix(c.NodeName, "worker-7-") {
		t.Errorf("incarnation %d, node name %q", c.Meta.Incarnation, c.NodeName)
	}
	if c.Resolver == nil || c.RejoinInterval <= 0 {
		t.Errorf("defaults not filled in: resolver %v, rejoin interval %v", c.Resolver, c.RejoinInterval)
	}
	if other := mod(func(*Config) {}); other.NodeName == c.NodeName {
		t.Errorf("two starts got the same node name %q", c.NodeName)
	}
	for name, f := range map[string]func(*Config){
		"no advertise address":       func(c *Config) { c.AdvertiseAddr = "" },
		"probe timeout above period": func(c *Config) { c.ProbeTimeout = 2 * c.ProbeInterval },
		"bad port":                   func(c *Config) { c.BindPort = 70000 },
		"bad meta":                   func(c *Config) { c.Meta.Role = "" },
		"retry max below min":        func(c *Config) { c.JoinRetryMax = time.Millisecond },
		"seed without a port":        func(c *Config) { c.Seeds = []string{"coordinator"} },
		"negative rejoin interval":   func(c *Config) { c.RejoinInterval = -time.Second },
	} {
		if err := mod(f).Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

func TestJoinRejectsLargeMeta(t *testing.T) {
	cfg := loopbackConfig(t, "big", nil)
	cfg.Meta.GRPCAddr = strings.Repeat("x", MaxMetaSize)
	_, err := Join(context.Background(), cfg)
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("Join with %d-byte address: %v, want ErrMetaTooLarge", MaxMetaSize, err)
	}
	t.Log(err)
}

func TestMemberlistLogLevels(t *testing.T) {
	cases := []struct {
		line      string
		quiet     bool
		wantLevel string
		wantMsg   string
	}{
		// Routine failure detection: Debug.
		{"[INFO] memberlist: Suspect worker-w2-1 has failed, no acks received", false, "DEBUG", "Suspect worker-w2-1 has failed, no acks received"},
		{"[ERR] memberlist: Failed fallback TCP ping: timeout 500ms: read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout", false, "DEBUG", "Failed fallback TCP ping"},
		{"[INFO] memberlist: Marking worker-w2-1 as failed, suspect timeout reached (1 peer confirmations)", false, "DEBUG", "Marking"},
		{"[ERR] memberlist: Push/Pull with worker-w2-1 failed: dial tcp 127.0.0.1:2: i/o timeout", false, "DEBUG", "Push/Pull"},
		{"[ERR] memberlist: failed to receive: read tcp 127.0.0.1:2->127.0.0.1:1: i/o timeout from=127.0.0.1:1", false, "DEBUG", "failed to receive"},
		{"[WARN] memberlist: Got ping for unexpected node 'coordinator-1' from=127.0.0.1:1", false, "DEBUG", "Got ping"},
		{"[WARN] memberlist: Was able to connect to worker-w2-1 over TCP but UDP probes failed, network may be misconfigured", false, "DEBUG", "Was able"},
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1", false, "DEBUG", "Stream connection from=127.0.0.1:1"},
		// Our own sockets closed by Shutdown.
		{"[ERR] memberlist: Failed to send gossip to 127.0.0.1:2: write udp 127.0.0.1:1->127.0.0.1:2: use of closed network connection", false, "DEBUG", "Failed to send gossip"},
		{"[WARN] memberlist: Refuting a suspect message (from: worker-w1-1)", false, "DEBUG", "Refuting a suspect message (from: worker-w1-1)"},
		// This node being declared dead stays visible.
		{"[WARN] memberlist: Refuting a dead message (from: worker-w1-1)", false, "WARN", "Refuting a dead message"},
		// Anything else keeps memberlist's level.
		{"[ERR] memberlist: Conflicting address for worker-w2-1. Mine: 127.0.0.1:1 Theirs: 127.0.0.1:3", false, "ERROR", "Conflicting address"},
		{"[WARN] memberlist: discarding packet with unacceptable label \"x\"", false, "WARN", "discarding packet"},
		{"no level here", false, "INFO", "no level here"},
		// After Leave or Shutdown, everything is Debug.
		{"[ERR] memberlist: Conflicting address for worker-w2-1. Mine: 127.0.0.1:1 Theirs: 127.0.0.1:3", true, "DEBUG", "Conflicting address"},
	}
	for _, tc := range cases {
		var buf bytes.Buffer
		var quiet atomic.Bool
		quiet.Store(tc.quiet)
		l := memberlistLog{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), quiet: &quiet}.logger()
		l.Print(tc.line)
		out := buf.String()
		if !strings.Contains(out, "level="+tc.wantLevel+" ") || !strings.Contains(out, tc.wantMsg) || strings.Contains(out, "memberlist:") {
			t.Errorf("%q (quiet %v) logged as\n%s want level %s with %q", tc.line, tc.quiet, out, tc.wantLevel, tc.wantMsg)
		}
	}
}

func TestMemberlistLogReportsSuspicion(t *testing.T) {
	var got []string
	l := memberlistLog{
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		onSuspect: func(name string) { got = append(got, name) },
	}.logger()
	l.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "worker-w2-1")
	l.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "a name with spaces")
	l.Printf("[WARN] memberlist: Refuting a suspect message (from: %s)", "worker-w1-1") // about us
	l.Printf("[INFO] memberlist: Marking %s as failed, suspect timeout reached (0 peer confirmations)", "worker-w3-1")
	if want := []string{"worker-w2-1", "a name with spaces"}; !slices.Equal(got, want) {
		t.Errorf("suspects reported: %q, want %q", got, want)
	}
}

func TestMemberTableState(t *testing.T) {
	self := Member{Name: "coordinator-1", Meta: Meta{Role: RoleCoordinator, GRPCAddr: "c:1"}}
	w1 := Member{Name: "worker-w1-1", Meta: Meta{Role: RoleWorker, WorkerID: "w1", GRPCAddr: "w1:1"}}
	tab := &memberTable{self: self.Name, members: map[string]Member{}}
	tab.apply(Event{Kind: EventJoin, Member: self})
	tab.apply(Event{Kind: EventJoin, Member: w1})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	state := func(name string) State {
		for _, m := range tab.list() {
			if m.Name == name {
				return m.State
			}
		}
		t.Fatalf("%s not in the table", name)
		return 0
	}

	tab.suspect(log, w1.Name)
	tab.suspect(log, self.Name)  // memberlist never probes itself; ignore it anyway
	tab.suspect(log, "stranger") // foreign metadata: not in the table
	if state(w1.Name) != StateSuspect || state(self.Name) != StateAlive || len(tab.list()) != 2 {
		t.Fatalf("after suspicion: %+v", tab.list())
	}
	pingDelegate{table: tab, log: log}.NotifyPingComplete(&memberlist.Node{Name: w1.Name}, time.Millisecond, nil)
	if state(w1.Name) != StateAlive {
		t.Errorf("an answered probe left %s %v", w1.Name, state(w1.Name))
	}
	tab.suspect(log, w1.Name)
	w1.Meta.GRPCAddr = "w1:2"
	tab.apply(Event{Kind: EventUpdate, Member: w1}) // it announced new metadata: it is alive
	if state(w1.Name) != StateAlive {
		t.Errorf("an update left %s %v", w1.Name, state(w1.Name))
	}
	tab.suspect(log, w1.Name)
	tab.apply(Event{Kind: EventLeave, Member: w1, Cause: CauseFailed})
	if len(tab.list()) != 1 {
		t.Errorf("after the leave: %+v", tab.list())
	}
}

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("events channel closed")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestEventQueue(t *testing.T) {
	q := newEventQueue()
	t.Cleanup(q.close)
	member := func(name, grpc string) Member {
		return Member{Name: name, Meta: Meta{Role: RoleWorker, WorkerID: name, GRPCAddr: grpc}}
	}
	// Nobody is reading: pushes must not block, and nothing may be lost.
	const n = 10000
	for i := range n {
		q.push(Event{Kind: EventJoin, Member: member("many", string(rune('a'+i%26)))})
	}
	q.push(Event{Kind: EventJoin, Member: member("a", "v1")})
	q.push(Event{Kind: EventUpdate, Member: member("a", "v2")})
	q.push(Event{Kind: EventUpdate, Member: member("a", "v3")}) // merges into the join
	q.push(Event{Kind: EventLeave, Member: member("a", "v3"), Cause: CauseFailed})
	q.push(Event{Kind: EventUpdate, Member: member("a", "v4")}) // after a leave: kept apart
	q.push(Event{Kind: EventUpdate, Member: member("b", "v1")})

	for range n {
		if e := recv(t, q.out); e.Member.Name != "many" {
			t.Fatalf("got %v among the first %d events", e, n)
		}
	}
	want := []string{"join a v3", "leave a v3", "update a v4", "update b v1"}
	for _, w := range want {
		e := recv(t, q.out)
		if got := e.Kind.String() + " " + e.Member.Name + " " + e.Member.Meta.GRPCAddr; got != w {
			t.Errorf("got %q, want %q", got, w)
		}
	}
	q.close()
	if _, ok := <-q.out; ok {
		t.Error("events channel still open after close")
	}
	q.push(Event{Kind: EventJoin}) // after close: dropped, no panic
}

func TestStatic(t *testing.T) {
	coord := Member{Name: "coordinator-1", Addr: "c:7946", Meta: Meta{Role: RoleCoordinator, GRPCAddr: "c:9000"}}
	w1 := Member{Name: "worker-1-a", Addr: "w1:7946", Meta: Meta{Role: RoleWorker, WorkerID: "1", GRPCAddr: "w1:9000"}}
	s := NewStatic(coord, w1)
	t.Cleanup(func() { _ = s.Shutdown() })
	var m Membership = s

	w2 := Member{Name: "worker-2-b", Meta: Meta{Role: RoleWorker, WorkerID: "2", GRPCAddr: "w2:9000"}}
	s.Add(w2)
	w2.Meta.GRPCAddr = "w2:9001"
	s.Add(w2)
	if !s.SetState("worker-2-b", StateSuspect) || s.SetState("nobody", StateSuspect) || s.SetState("coordinator-1", StateSuspect) {
		t.Error("SetState reported wrongly")
	}
	if ms := m.Members(); len(ms) != 3 || ms[2].Name != "worker-2-b" || ms[2].State != StateSuspect || ms[0].State != StateAlive {
		t.Errorf("Members with a suspect = %+v", ms)
	}
	if !s.Remove("worker-1-a", CauseFailed) || s.Remove("nobody", CauseFailed) {
		t.Error("Remove reported wrongly")
	}
	if err := m.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing has been read yet, so the join and update of worker-2 are
	// still queued together and arrive merged, as from gossip.
	for _, want := range []string{"join coordinator-1", "join worker-1-a", "join worker-2-b", "leave worker-1-a (failed)", "leave coordinator-1 (left)"} {
		if got := recv(t, m.Events()).String(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	if ms := m.Members(); len(ms) != 1 || ms[0].Meta.GRPCAddr != "w2:9001" || ms[0].State != StateSuspect {
		t.Errorf("Members = %+v", ms)
	}
	w2.State = StateSuspect // ignored: Add makes a member alive
	s.Add(w2)
	if ms := m.Members(); len(ms) != 1 || ms[0].State != StateAlive {
		t.Errorf("Members after Add = %+v", ms)
	}
	if m.Local().Name != "coordinator-1" {
		t.Errorf("Local = %+v", m.Local())
	}
	if err := m.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := m.Leave(context.Background()); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave after Shutdown: %v", err)
	}
}
