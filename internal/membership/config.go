package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/nice-flow/nice/internal/creds"
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
	// seeds means this node starts a cluster of its own. After joining, the
	// node keeps joining through any seed at whose address no member it
	// believes alive answers (see RejoinInterval), so a seed that restarts
	// under a new name is found again, and finds this node.
	Seeds []string
	// RejoinInterval is how often a node with seeds resolves each seed again
	// and checks that a live member answers there. A restarted seed is seen
	// again at most about one interval after this node first fails to reach
	// its predecessor (plus the time the seed takes to start). Each check is
	// a name lookup; a join is attempted only when the check fails.
	RejoinInterval time.Duration
	// Resolver looks up the host names of seeds and of AdvertiseAddr. nil
	// means net.DefaultResolver. Seeds are resolved on every attempt, since
	// a restarted container may come back with a new IP.
	Resolver Resolver

	// Meta is announced to the cluster; Incarnation 0 means "now".
	Meta Meta

	// Creds, if non-nil, encrypts and authenticates every gossip packet and
	// stream with its gossip key (AES-GCM), and refuses whatever is not: a
	// node without the key, or with another, cannot join nor be joined.
	// Nil means plaintext gossip that anyone who reaches the port can join.
	// Either way every packet carries the label creds.GossipLabel
	// (authenticated with the key), so nodes of another program are refused.
	Creds *creds.Bundle

	// Failure detection (SWIM, with memberlist's Lifeguard extensions).
	//
	// A member is declared dead when it leaves a probe unanswered (directly,
	// through IndirectChecks peers and over TCP) for a whole ProbeInterval
	// and then does not refute the suspicion for the suspicion timeout,
	// SuspicionMult * ProbeInterval (times log10 of the cluster size from 10
	// members on). So, roughly:
	//
	//	tolerated stall  ~ (1 + SuspicionMult) * ProbeInterval
	//	detection time   ~ (1.5 + SuspicionMult) * ProbeInterval, up to
	//	                   (2 + SuspicionMult) * ProbeInterval
	//
	// A member that stops answering for less than the tolerated stall (CPU
	// starvation, GC, a paused container) is at most suspected; one that
	// stays silent longer is declared dead. The two cannot be told apart,
	// so detection can never be much faster than the longest stall a live
	// member may show. In a cluster of at least SuspicionMult members,
	// memberlist also waits for SuspicionMult-2 other members to confirm a
	// suspicion before using that timeout (up to 6 times longer without
	// them), so one starved prober cannot kill a healthy member.
	//
	// DefaultConfig's figures are in its comment.

	// ProbeInterval is how often this node probes one peer, and how long a
	// probe waits for any ack (direct, indirect or TCP). Larger tolerates
	// longer stalls and sends fewer packets, and detects deaths later.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for an ack before also
	// asking IndirectChecks peers to probe and trying TCP. It must be below
	// ProbeInterval. Too small only costs extra indirect probes (and the log
	// lines that used to cry wolf); the verdict still waits for the whole
	// ProbeInterval.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a suspect has to refute before it is
	// declared dead: SuspicionMult * max(1, log10(nodes)) * ProbeInterval.
	// Smaller is faster, but a process paused longer than that (GC, CPU
	// starvation, a debugger) is declared dead and must rejoin.
	SuspicionMult int
	// GossipInterval is how often news (joins, suspicions, refutations,
	// deaths) is sent to a few random peers. Smaller spreads news faster for
	// more packets; a refutation must arrive before the suspicion timeout.
	GossipInterval time.Duration
	// PushPullInterval is how often a full state exchange over TCP repairs
	// whatever gossip missed. Smaller converges sooner at more bandwidth.
	PushPullInterval time.Duration
	// TCPTimeout bounds joins, push/pull exchanges and the handling of a
	// TCP probe. A starved peer may take seconds to answer one.
	TCPTimeout time.Duration

	// JoinRetryMin and JoinRetryMax bound the backoff between join attempts
	// (doubling from min to max).
	JoinRetryMin, JoinRetryMax time.Duration
	// LeaveTimeout bounds Leave when its context has no deadline.
	LeaveTimeout time.Duration

	// Logger receives this package's and memberlist's logs. nil means
	// slog.Default().
	Logger *slog.Logger

	// wrapTransport, set by tests, wraps the network transport, for example
	// to freeze a node as a stalled process would be.
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// DefaultConfig returns settings for a LAN or a single machine whose cores
// are busy training. There a process may not run at all for seconds: with
// four workers training on two cores (and other work on the machine), a
// worker went without running any goroutine for over a second about once a
// minute, and for up to 7 s while it received a model state. The 0.5 s
// probes used before declared live workers dead several times a minute. So
// probing is slower even than memberlist's LAN profile (1 s probes,
// suspicion multiplier 4):
//
//   - a member that stops answering for up to 2 s is not even suspected;
//   - one silent for up to about 8 s is suspected, not declared dead;
//   - a dead member is declared dead after about 10 s (9.8-9.9 s measured on
//     loopback with 3 and 5 members).
//
// The ring and the gRPC sessions see most failures sooner; gossip confirms
// them and watches what nothing else does. A seed that restarts is found
// again by the heal loop within about RejoinInterval + ProbeTimeout (2 s),
// however slow failure detection is. On machines with idle cores,
// ProbeInterval 1 s with ProbeTimeout 0.5 s halves every figure.
func DefaultConfig() Config {
	return Config{
		BindAddr:         "0.0.0.0",
		BindPort:         7946,
		ProbeInterval:    2 * time.Second,
		ProbeTimeout:     time.Second,
		SuspicionMult:    3,
		GossipInterval:   100 * time.Millisecond,
		PushPullInterval: 15 * time.Second,
		TCPTimeout:       2 * time.Second,
		JoinRetryMin:     200 * time.Millisecond,
		JoinRetryMax:     5 * time.Second,
		LeaveTimeout:     2 * time.Second,
		RejoinInterval:   time.Second,
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
	if c.JoinRetryMin <= 0 || c.JoinRetryMax < c.JoinRetryMin || c.LeaveTimeout <= 0 || c.RejoinInterval <= 0 {
		errs = append(errs, errors.New("need 0 < JoinRetryMin <= JoinRetryMax, LeaveTimeout > 0 and RejoinInterval > 0"))
	}
	for _, s := range c.Seeds {
		if _, _, err := net.SplitHostPort(s); err != nil {
			errs = append(errs, fmt.Errorf("seed %q is not host:port: %w", s, err))
		}
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
		{&c.RejoinInterval, d.RejoinInterval},
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
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
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
