package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/nice-flow/nice/internal/creds"
)

// Gossip is a Membership backed by a memberlist node.
type Gossip struct {
	ml           *memberlist.Memberlist
	queue        *eventQueue
	log          *slog.Logger
	leaveTimeout time.Duration
	meta         Meta
	delegate     *metaDelegate
	table        *memberTable
	resolver     Resolver
	// quiet turns memberlist's logs to Debug once this node leaves or shuts
	// down (see memberlistLog).
	quiet atomic.Bool

	// The heal loop (heal.go) runs until stopHeal.
	healCancel context.CancelFunc
	healDone   sync.WaitGroup

	mu       sync.Mutex
	shutdown bool
}

var _ Membership = (*Gossip)(nil)

// Join starts a gossip node and joins the cluster through cfg.Seeds,
// retrying with backoff until a seed answers or ctx ends. With no seeds it
// returns at once with a cluster of one. Zero fields of cfg take their
// DefaultConfig values.
//
// A node with seeds keeps checking them after joining, and joins through a
// seed again whenever no live member answers at its address (see
// Config.RejoinInterval), until Leave or Shutdown.
func Join(ctx context.Context, cfg Config) (*Gossip, error) {
	cfg = cfg.withDefaults(time.Now())
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("joining as %s: %w", cfg.NodeName, err)
	}
	advertise, err := resolveAdvertise(ctx, cfg.Resolver, cfg.AdvertiseAddr)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("node", cfg.NodeName)

	g := &Gossip{
		queue: newEventQueue(), log: log, leaveTimeout: cfg.LeaveTimeout,
		meta: cfg.Meta, delegate: &metaDelegate{}, resolver: cfg.Resolver,
		table: &memberTable{self: cfg.NodeName, members: map[string]Member{}},
	}
	g.delegate.set(meta)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr, mc.BindPort = cfg.BindAddr, cfg.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = advertise, cfg.AdvertisePort
	mc.ProbeInterval, mc.ProbeTimeout = cfg.ProbeInterval, cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.TCPTimeout = cfg.TCPTimeout
	mc.Label = creds.GossipLabel
	if key := cfg.Creds.GossipKey(); key != nil {
		mc.SecretKey = key
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Delegate = g.delegate
	mc.Events = eventDelegate{queue: g.queue, table: g.table, log: log}
	mc.Ping = pingDelegate{table: g.table, log: log}
	mlLog := log.With("component", "memberlist")
	mc.Logger = memberlistLog{
		log:       mlLog,
		onSuspect: func(name string) { g.table.suspect(mlLog, name) },
		quiet:     &g.quiet,
		refused:   &creds.RefusalLimiter{Every: time.Second},
	}.logger()

	if cfg.wrapTransport != nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{cfg.BindAddr}, BindPort: cfg.BindPort, Logger: mc.Logger,
		})
		if err != nil {
			g.queue.close()
			return nil, fmt.Errorf("starting gossip transport on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
		}
		if mc.BindPort == 0 {
			mc.BindPort = nt.GetAutoBindPort()
			mc.AdvertisePort = mc.BindPort
		}
		mc.Transport = cfg.wrapTransport(nt)
	}
	g.ml, err = memberlist.Create(mc)
	if err != nil {
		if mc.Transport != nil {
			_ = mc.Transport.Shutdown()
		}
		g.queue.close()
		return nil, fmt.Errorf("starting gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	log.Info("gossip started", "addr", g.Local().Addr, "role", cfg.Meta.Role, "worker", cfg.Meta.WorkerID, "incarnation", cfg.Meta.Incarnation,
		"encrypted", mc.SecretKey != nil)
	if len(cfg.Seeds) == 0 {
		return g, nil
	}
	if err := g.joinSeeds(ctx, cfg); err != nil {
		_ = g.Shutdown()
		return nil, err
	}
	g.startHeal(cfg.Seeds, cfg.RejoinInterval, cfg.TCPTimeout)
	return g, nil
}

func (g *Gossip) joinSeeds(ctx context.Context, cfg Config) error {
	wait := cfg.JoinRetryMin
	for attempt := 1; ; attempt++ {
		n, err := g.joinOnce(ctx, cfg.Seeds, cfg.TCPTimeout)
		if err == nil {
			g.log.Info("joined cluster", "seeds", cfg.Seeds, "contacted", n, "attempt", attempt)
			return nil
		}
		g.log.Warn("joining cluster failed", "seeds", cfg.Seeds, "attempt", attempt, "retry_in", wait, "err", oneLine(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("joining cluster via %v: gave up after %d attempts: %w (last: %s)",
				cfg.Seeds, attempt, ctx.Err(), oneLine(err))
		case <-t.C:
		}
		wait = min(2*wait, cfg.JoinRetryMax)
	}
}

// joinOnce resolves the seeds (here rather than in memberlist, so that a
// restarted seed's new address is found the same way the heal loop finds
// it) and joins through every address found.
func (g *Gossip) joinOnce(ctx context.Context, seeds []string, lookupTimeout time.Duration) (int, error) {
	var addrs []string
	var errs []error
	for _, s := range seeds {
		a, err := resolveSeed(ctx, g.resolver, s, lookupTimeout)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		addrs = append(addrs, a...)
	}
	if len(addrs) == 0 {
		return 0, errors.Join(errs...)
	}
	n, err := g.ml.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("joining through %v: %w", addrs, err)
	}
	return n, nil
}

// oneLine flattens memberlist's multi-line join errors ("1 error occurred:
// \n\t* ...") for logs.
func oneLine(err error) string {
	s := err.Error()
	if i := strings.Index(s, "occurred:"); i >= 0 {
		s = s[i+len("occurred:"):]
	}
	var parts []string
	for _, p := range strings.Split(s, "\n") {
		if p = strings.TrimPrefix(strings.TrimSpace(p), "* "); p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "; ")
}

// resolveAdvertise turns a host name into an IP, which memberlist needs.
func resolveAdvertise(ctx context.Context, r Resolver, host string) (string, error) {
	if host == "" || net.ParseIP(host) != nil {
		return host, nil
	}
	ips, err := r.LookupIPAddr(ctx, host)
	if err != nil {
		return "", fmt.Errorf("resolving advertise address %q: %w", host, err)
	}
	for _, ip := range ips {
		if ip.IP.To4() != nil {
			return ip.IP.String(), nil
		}
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("resolving advertise address %q: no addresses", host)
	}
	return ips[0].IP.String(), nil
}

// Local implements Membership.
func (g *Gossip) Local() Member { return g.table.localMember() }

// Members implements Membership, sorted by name. Nodes whose metadata
// cannot be decoded (not ours) are left out. StateSuspect reflects this
// node's own probes only: memberlist keeps the suspicions it hears from
// others to itself.
func (g *Gossip) Members() []Member { return g.table.list() }

// Events implements Membership.
func (g *Gossip) Events() <-chan Event { return g.queue.out }

// Leave implements Membership. Without a deadline on ctx it waits at most
// Config.LeaveTimeout. It stops the heal loop first, so a node that left
// never joins again by itself.
func (g *Gossip) Leave(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shutdown {
		return fmt.Errorf("leaving: %w", ErrShutdown)
	}
	timeout := g.leaveTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	deadline := time.Now().Add(timeout)
	if timeout <= 0 {
		return fmt.Errorf("leaving: %w", context.DeadlineExceeded)
	}
	g.quiet.Store(true)
	g.stopHeal()
	// Announce the intent first: the dead message memberlist sends next
	// reaches others' NotifyLeave without saying it was voluntary. Alone
	// (the last to go at a clean shutdown) there is nobody to tell, and
	// waiting for an acknowledgement would only time out.
	leaving := g.meta
	leaving.Leaving = true
	if b, err := leaving.Encode(); err == nil && len(g.Members()) > 1 {
		g.delegate.set(b)
		if err := g.ml.UpdateNode(timeout / 2); err != nil {
			g.log.Warn("announcing leave: others may report this node as failed", "err", err)
		}
	}
	if err := g.ml.Leave(time.Until(deadline)); err != nil {
		return fmt.Errorf("leaving: %w", err)
	}
	g.log.Info("left cluster")
	return nil
}

// Shutdown implements Membership. It waits for the heal loop, which may be
// in the middle of a join attempt (at most Config.TCPTimeout per address).
func (g *Gossip) Shutdown() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shutdown {
		return nil
	}
	g.shutdown = true
	// memberlist closes its sockets before it stops its tickers, so a
	// gossip round or probe in flight fails with "use of closed network
	// connection": expected now, hence Debug.
	g.quiet.Store(true)
	g.stopHeal()
	err := g.ml.Shutdown()
	g.queue.close()
	if err != nil {
		return fmt.Errorf("shutting down gossip: %w", err)
	}
	return nil
}

func toMember(n *memberlist.Node) (Member, error) {
	m := Member{Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		return m, fmt.Errorf("member %s: %w", n.Name, err)
	}
	m.Meta = meta
	return m, nil
}
