package membership

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// healBound is how long a restarted seed may take to be seen again. The
// heal loop needs about one RejoinInterval plus a ping timeout; the rest is
// margin for a machine whose cores are busy.
const healBound = 15 * time.Second

// healed reports whether every member sees the seed alive and the seed sees
// every member.
func healed(seed *node, members []*node) bool {
	for _, m := range members {
		if !m.sees(seed.Local().Name, StateAlive) || !seed.sees(m.Local().Name, StateAlive) {
			return false
		}
	}
	return true
}

// TestSeedRestartHeals kills the seed without a goodbye and starts a new
// one, under a new name, on the same address: as when the coordinator is
// SIGKILLed and started again. The new seed starts once every member has
// found the old one unresponsive but before any declared it dead (a
// container takes seconds to restart), when the news of the members' own
// joins has long stopped circulating: the new seed knows nobody, nobody
// knows it, and only the heal loop can bring them together.
func TestSeedRestartHeals(t *testing.T) {
	nodes := startCluster(t, 2)
	seed, members := nodes[0], nodes[1:]
	old := seed.Local()
	_, port, err := splitHostPort(old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := seed.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every member to find the old seed unresponsive", func() bool {
		for _, m := range members {
			if m.sees(old.Name, StateAlive) {
				return false
			}
		}
		return true
	})
	cfg := loopbackConfig(t, "", nil)
	cfg.BindPort = port
	restarted := startNode(t, cfg)
	if restarted.Local().Name == old.Name || restarted.Local().Addr != old.Addr {
		t.Fatalf("restarted as %s at %s; was %s at %s", restarted.Local().Name, restarted.Local().Addr, old.Name, old.Addr)
	}
	took := waitFor(t, healBound, "every member and the restarted seed to see each other", func() bool {
		return healed(restarted, members)
	})
	t.Logf("healed %v after the new seed started", took.Round(10*time.Millisecond))
	// The old seed is still declared dead in the end.
	for _, m := range members {
		m.waitEvent(t, failureBound, "failure of "+old.Name, leaveOf(old.Name, CauseFailed))
	}
}

// TestSeedRestartAfterDeathHeals restarts the seed only after every member
// declared the old one dead, so no member is left at the seed's address.
func TestSeedRestartAfterDeathHeals(t *testing.T) {
	nodes := startCluster(t, 2)
	seed, members := nodes[0], nodes[1:]
	old := seed.Local()
	_, port, err := splitHostPort(old.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := seed.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		m.waitEvent(t, failureBound, "failure of "+old.Name, leaveOf(old.Name, CauseFailed))
	}
	cfg := loopbackConfig(t, "", nil)
	cfg.BindPort = port
	restarted := startNode(t, cfg)
	took := waitFor(t, healBound, "every member and the restarted seed to see each other", func() bool {
		return healed(restarted, members)
	})
	t.Logf("healed %v after the new seed started", took.Round(10*time.Millisecond))
}

// switchResolver resolves every name to one IP, which the test changes.
type switchResolver struct {
	mu sync.Mutex
	ip net.IP
}

func (r *switchResolver) set(ip string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ip = net.ParseIP(ip)
}

func (r *switchResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return []net.IPAddr{{IP: r.ip}}, nil
}

// TestSeedMovedHeals restarts the seed at a new IP under the same host
// name, as a recreated container may be: members must resolve the name
// again.
func TestSeedMovedHeals(t *testing.T) {
	if l, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		t.Skipf("cannot bind a second loopback address here: %v", err)
	} else {
		_ = l.Close()
	}
	resolver := &switchResolver{}
	resolver.set("127.0.0.1")
	seed := startNode(t, loopbackConfig(t, "", nil))
	_, port, err := splitHostPort(seed.Local().Addr)
	if err != nil {
		t.Fatal(err)
	}
	seedName := net.JoinHostPort("coordinator.invalid", strconv.Itoa(port))
	var members []*node
	for _, id := range []string{"1", "2"} {
		cfg := loopbackConfig(t, id, []string{seedName})
		cfg.Resolver = resolver
		members = append(members, startNode(t, cfg))
	}
	waitFor(t, 10*time.Second, "the first cluster", func() bool { return healed(seed, members) })

	if err := seed.Shutdown(); err != nil {
		t.Fatal(err)
	}
	cfg := loopbackConfig(t, "", nil)
	cfg.BindAddr, cfg.BindPort = "127.0.0.2", port
	moved := startNode(t, cfg)
	resolver.set("127.0.0.2")
	took := waitFor(t, healBound, "every member and the moved seed to see each other", func() bool {
		return healed(moved, members)
	})
	t.Logf("healed %v after the seed moved to %s", took.Round(10*time.Millisecond), moved.Local().Addr)
}

// logRecorder keeps the level and message of every record a node logs.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

type recordingHandler struct {
	next slog.Handler
	rec  *logRecorder
}

func (h recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.rec.mu.Lock()
	h.rec.recs = append(h.rec.recs, fmt.Sprintf("%v %s", r.Level, r.Message))
	h.rec.mu.Unlock()
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordingHandler{h.next.WithAttrs(as), h.rec}
}

func (h recordingHandler) WithGroup(name string) slog.Handler {
	return recordingHandler{h.next.WithGroup(name), h.rec}
}

// record makes cfg's logger also record into rec.
func record(cfg Config, rec *logRecorder) Config {
	cfg.Logger = slog.New(recordingHandler{cfg.Logger.Handler(), rec})
	return cfg
}

// above lists the records at level or above.
func (r *logRecorder) above(level slog.Level) []string {
	var out []string
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if l >= level {
			out = append(out, r.matching(l.String()+" ")...)
		}
	}
	return out
}

// matching lists the records ("LEVEL message") that start with prefix.
func (r *logRecorder) matching(prefix string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.recs {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// TestCleanShutdownIsQuiet stops a cluster the way nice-coord up does on
// Ctrl-C (the coordinator leaves first, then every worker leaves and shuts
// down) and checks that nobody logged a warning or an error.
func TestCleanShutdownIsQuiet(t *testing.T) {
	rec := &logRecorder{}
	coord := startNode(t, record(loopbackConfig(t, "", nil), rec))
	nodes := []*node{coord}
	for _, id := range []string{"1", "2"} {
		nodes = append(nodes, startNode(t, record(loopbackConfig(t, id, []string{coord.Local().Addr}), rec)))
	}
	for _, n := range nodes {
		n.waitMembers(t, len(nodes))
	}
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := n.Leave(ctx); err != nil {
			t.Errorf("%s: %v", n.Local().Name, err)
		}
		cancel()
		if err := n.Shutdown(); err != nil {
			t.Errorf("%s: %v", n.Local().Name, err)
		}
	}
	if loud := rec.above(slog.LevelWarn); len(loud) > 0 {
		t.Errorf("a clean shutdown logged:\n%v", loud)
	}
}
