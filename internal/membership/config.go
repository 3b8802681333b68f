package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Config configures Join. Start from DefaultConfig.
type Config struct {
	// NodeName is this process's name in the cluster. Empty means a fresh
	// one, role-workerid-random, which is what a restarted process should
	// use: memberlist refuses a known name at a new address, and a dead
	// name keeps its address for a while.
	NodeName string

	// BindAddr and BindPort are where gossip listens (TCP and UDP). Port 0
	// picks a free port, which then also becomes the advertised port.
	BindAddr string
	BindPort int
	// AdvertiseAddr is the IP (or a host name resolved once at Join) that
	// others use to reach this node. Containers have several interfaces, so
	// it is required unless BindAddr is a specific address.
	AdvertiseAddr string
	// AdvertisePort defaults to BindPort.
	AdvertisePort int

	// Seeds are host:port gossip addresses of members to join through. Join
	// retries them with backoff until one answers or its context ends. No
	// seeds means this node starts a cluster of its own.
	Seeds []string

	// Meta is announced to the cluster; Incarnation 0 means "now".
	Meta Meta

	// ProbeInterval is how often this node probes one peer. Detection time
	// is roughly ProbeInterval (to reach the dead peer in the probe
	// rotation) + ProbeInterval (direct and indirect probes) + the
	// suspicion time. Smaller is faster but sends more packets: one probe
	// per node per interval.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for an ack before
	// asking others to probe indirectly. It must exceed the round trip plus
	// scheduling delays on a busy machine; too small gives false suspicions,
	// which the suspect refutes but which cost gossip.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a suspect has to refute before it is
	// declared dead: SuspicionMult * max(1, log10(nodes)) * ProbeInterval.
	// Smaller is faster, but a process paused longer than that (GC, CPU
	// starvation, a debugger) is declared dead and must rejoin.
	SuspicionMult int
	// GossipInterval is how often news (joins, suspicions, deaths) is sent
	// to a few random peers. Smaller spreads news faster for more packets.
	GossipInterval time.Duration
	// PushPullInterval is how often a full state exchange over TCP repairs
	// whatever gossip missed. Smaller converges sooner at more bandwidth.
	PushPullInterval time.Duration
	// TCPTimeout bounds joins, push/pull exchanges and TCP fallback probes.
	TCPTimeout time.Duration

	// JoinRetryMin and JoinRetryMax bound the backoff between join attempts
	// (doubling from min to max).
	JoinRetryMin, JoinRetryMax time.Duration
	// LeaveTimeout bounds Leave when its context has no deadline.
	LeaveTimeout time.Duration

	// Logger receives this package's and memberlist's logs. nil means
	// slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns settings for a LAN or a single machine: memberlist's
// LAN profile with probing and suspicion about twice as fast, so that a
// dead member of a small cluster is declared dead in about 3 s rather than
// about 6 s. The cost is a few more packets per second per node and less
// tolerance for a stalled process (about 1.5 s).
func DefaultConfig() Config {
	return Config{
		BindAddr:         "0.0.0.0",
		BindPort:         7946,
		ProbeInterval:    500 * time.Millisecond,
		ProbeTimeout:     250 * time.Millisecond,
		SuspicionMult:    3,
		GossipInterval:   100 * time.Millisecond,
		PushPullInterval: 15 * time.Second,
		TCPTimeout:       2 * time.Second,
		JoinRetryMin:     200 * time.Millisecond,
		JoinRetryMax:     5 * time.Second,
		LeaveTimeout:     2 * time.Second,
	}
}

// Validate checks c, assuming defaults have been filled in.
func (c Config) Validate() error {
	var errs []error
	if err := c.Meta.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.AdvertiseAddr == "" && (c.BindAddr == "" || c.BindAddr == "0.0.0.0" || c.BindAddr == "::") {
		errs = append(errs, errors.New("AdvertiseAddr is required when binding to all interfaces"))
	}
	if c.BindPort < 0 || c.BindPort > 65535 || c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		errs = append(errs, fmt.Errorf("ports out of range: bind %d, advertise %d", c.BindPort, c.AdvertisePort))
	}
	if c.ProbeInterval <= 0 || c.ProbeTimeout <= 0 || c.ProbeTimeout >= c.ProbeInterval {
		errs = append(errs, fmt.Errorf("need 0 < ProbeTimeout (%v) < ProbeInterval (%v)", c.ProbeTimeout, c.ProbeInterval))
	}
	if c.SuspicionMult < 1 || c.GossipInterval <= 0 || c.PushPullInterval <= 0 || c.TCPTimeout <= 0 {
		errs = append(errs, errors.New("SuspicionMult, GossipInterval, PushPullInterval and TCPTimeout must be positive"))
	}
	if c.JoinRetryMin <= 0 || c.JoinRetryMax < c.JoinRetryMin || c.LeaveTimeout <= 0 {
		errs = append(errs, errors.New("need 0 < JoinRetryMin <= JoinRetryMax and LeaveTimeout > 0"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid membership config: %w", err)
	}
	return nil
}

// withDefaults fills what the caller may leave empty: the node name, the
// incarnation, the advertise address and port, and zero tunables.
func (c Config) withDefaults(now time.Time) Config {
	d := DefaultConfig()
	if c.NodeName == "" {
		c.NodeName = freshNodeName(c.Meta)
	}
	if c.Meta.Incarnation == 0 {
		c.Meta.Incarnation = uint64(now.UnixNano())
	}
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.AdvertiseAddr == "" && c.BindAddr != "0.0.0.0" && c.BindAddr != "::" {
		c.AdvertiseAddr = c.BindAddr
	}
	if c.AdvertisePort == 0 {
		c.AdvertisePort = c.BindPort
	}
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.ProbeInterval, d.ProbeInterval}, {&c.ProbeTimeout, d.ProbeTimeout},
		{&c.GossipInterval, d.GossipInterval}, {&c.PushPullInterval, d.PushPullInterval},
		{&c.TCPTimeout, d.TCPTimeout}, {&c.JoinRetryMin, d.JoinRetryMin},
		{&c.JoinRetryMax, d.JoinRetryMax}, {&c.LeaveTimeout, d.LeaveTimeout},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = d.SuspicionMult
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func freshNodeName(m Meta) string {
	role := string(m.Role)
	if role == "" {
		role = "node"
	}
	if m.WorkerID != "" {
		return fmt.Sprintf("%s-%s-%08x", role, m.WorkerID, rand.Uint32())
	}
	return fmt.Sprintf("%s-%08x", role, rand.Uint32())
}
