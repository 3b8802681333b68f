package membership

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"
)

// Resolver looks up host names; *net.Resolver is one.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// The heal loop keeps a node with seeds in the seeds' cluster.
//
// Joining once is not enough. A seed that restarts (killed, its container
// recreated) comes back under a new node name and, having no seeds of its
// own, as a cluster of one: nobody tells it about the others and nobody
// tells the others about it, so both sides would see each other as gone for
// the rest of the run. So every RejoinInterval the node resolves each seed
// again (a recreated container may have a new IP) and pings the member it
// knows at that address, by name; if none answers, it joins through the
// address. A restarted seed does not answer to its predecessor's name, so
// the join happens within about one interval of the restart, without
// waiting for failure detection to declare the predecessor dead (which is
// slow on purpose, see Config). A seed that was only slow to answer costs
// one extra push/pull exchange, nothing more.

func (g *Gossip) startHeal(seeds []string, every, lookupTimeout time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	g.healCancel = cancel
	g.healDone.Add(1)
	go g.heal(ctx, slices.Clone(seeds), every, lookupTimeout)
}

// stopHeal ends the heal loop and waits for it. Safe to call when no loop
// was started, and twice.
func (g *Gossip) stopHeal() {
	if g.healCancel != nil {
		g.healCancel()
	}
	g.healDone.Wait()
}

func (g *Gossip) heal(ctx context.Context, seeds []string, every, lookupTimeout time.Duration) {
	defer g.healDone.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, seed := range seeds {
			if ctx.Err() != nil {
				return
			}
			g.healSeed(ctx, seed, lookupTimeout)
		}
	}
}

// healSeed joins through seed if nobody answers at its address. Failures
// are Debug: a seed that is merely slow fails a ping now and then on a busy
// machine, and one that is gone is reported by failure detection. What is
// news is a new member found at a seed's address.
func (g *Gossip) healSeed(ctx context.Context, seed string, lookupTimeout time.Duration) {
	addrs, err := resolveSeed(ctx, g.resolver, seed, lookupTimeout)
	if err != nil {
		g.log.Debug("seed not resolved; will try again", "seed", seed, "err", err)
		return
	}
	if g.answersAt(addrs) {
		return
	}
	known := g.membersAt(addrs)
	n, err := g.ml.Join(addrs)
	if err != nil {
		g.log.Debug("joining through seed failed; will try again", "seed", seed, "err", oneLine(err))
		return
	}
	for _, name := range g.membersAt(addrs) {
		if !slices.Contains(known, name) {
			g.log.Info("joined through seed again: a new member answers at its address", "seed", seed, "member", name, "contacted", n)
		}
	}
}

// answersAt reports whether this node has one of the gossip addresses, or a
// member known at one of them answers a ping sent to its name.
func (g *Gossip) answersAt(addrs []string) bool {
	if slices.Contains(addrs, g.Local().Addr) {
		return true
	}
	for _, m := range g.Members() {
		if !slices.Contains(addrs, m.Addr) {
			continue
		}
		udp, err := net.ResolveUDPAddr("udp", m.Addr)
		if err != nil {
			continue
		}
		if _, err := g.ml.Ping(m.Name, udp); err == nil {
			g.table.setState(m.Name, StateAlive)
			return true
		}
	}
	return false
}

// membersAt lists the names of the members known at the addresses.
func (g *Gossip) membersAt(addrs []string) []string {
	var names []string
	for _, m := range g.Members() {
		if slices.Contains(addrs, m.Addr) {
			names = append(names, m.Name)
		}
	}
	return names
}

// resolveSeed turns host:port into ip:port for every address of host, in
// the form Member.Addr has.
func resolveSeed(ctx context.Context, r Resolver, seed string, timeout time.Duration) ([]string, error) {
	host, port, err := net.SplitHostPort(seed)
	if err != nil {
		return nil, fmt.Errorf("seed %q: %w", seed, err)
	}
	if ip := net.ParseIP(host); ip != nil {
		return []string{net.JoinHostPort(ip.String(), port)}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ips, err := r.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolving seed %q: %w", seed, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolving seed %q: no addresses", seed)
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip.IP.String(), port))
	}
	return out, nil
}
