package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/rpcopt"
	"github.com/nice-flow/nice/internal/session"
	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/ring"
)

// Config configures a Worker.
type Config struct {
	// ID is the worker's stable identity across restarts (default: host name).
	ID string
	// Listen is where the gRPC server listens (host:port; port 0 picks one).
	Listen string
	// Advertise is the address others reach the gRPC server at; empty means
	// the listener's address with the host replaced by AdvertiseHost.
	Advertise string
	// AdvertiseHost is used when Advertise is empty.
	AdvertiseHost string
	// LocalDir, if set, is a folder the ring's processes on this host share
	// (mode 0700 or 0755, owned by this user; created when missing): the
	// worker also serves its gRPC server on a Unix socket there, named after
	// Advertise, and reaches each peer through the peer's socket there when
	// one answers, over TCP otherwise. The same checks run on both routes;
	// with Creds, the same mutual TLS handshake authenticates a socket's two
	// ends, and the stream then stays in the clear (it never leaves the
	// kernel). A Unix socket costs the kernel about half as much per byte as
	// TCP. Empty: TCP only.
	LocalDir string
	// HTTP, if set, is where GET /healthz, /readyz and /metrics are served
	// (host:port; port 0 picks one).
	HTTP string
	// Coordinator is the coordinator's gRPC address.
	Coordinator string
	// Creds, if non-nil, is used on every gRPC connection of the worker:
	// its server (ring, state transfer, health) requires the cluster's
	// certificates, and its session, ring and state fetches present them.
	// Nil means plaintext. (Gossip is joined outside the worker.)
	Creds *creds.Bundle
	// Sessions, if set, opens the sessions with the coordinator instead of
	// gRPC to Coordinator (session.Inmem runs a coordinator in this
	// process).
	Sessions session.Dialer
	// DataDir is the MNIST folder ("" finds it; see mnist.FindDir).
	DataDir string
	// DigestEvery includes a parameter digest in every this many steps'
	// reports (0: never).
	DigestEvery int
	// RetryMin and RetryMax bound the backoff between attempts to reach the
	// coordinator.
	RetryMin, RetryMax time.Duration
	// Ring tunes the all-reduce.
	Ring ring.Config
	// SessionTimeout ends the session when the coordinator has sent nothing
	// (not even a heartbeat) for this long; the worker then reconnects.
	SessionTimeout time.Duration
	// LeaveTimeout bounds how long a worker told to stop waits for the
	// coordinator to dismiss it (once its state is checkpointed). Keep it
	// below the container's stop grace period.
	LeaveTimeout time.Duration
	// StateTransfers bounds the state transfers the worker serves to peers
	// and the coordinator: how many at once, how long each and each chunk
	// may take (zero fields: statexfer.DefaultServeLimits).
	StateTransfers statexfer.ServeLimits
	// Fault, if set, pauses the worker at one point of one step (tests).
	Fault Fault
	// Logger receives the worker's logs (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultConfig returns a worker configuration for a loopback cluster.
func DefaultConfig() Config {
	return Config{
		Listen:         "127.0.0.1:0",
		AdvertiseHost:  "127.0.0.1",
		Coordinator:    "127.0.0.1:7000",
		DigestEvery:    10,
		RetryMin:       100 * time.Millisecond,
		RetryMax:       2 * time.Second,
		LeaveTimeout:   20 * time.Second,
		SessionTimeout: rpcopt.DefaultSessionTimeout,
		Ring:           ring.DefaultConfig(),
	}
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("worker id is empty"))
	}
	if c.Coordinator == "" && c.Sessions == nil {
		errs = append(errs, errors.New("coordinator address is empty"))
	}
	if c.SessionTimeout < 2*rpcopt.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("session timeout %v: must be at least %v (two heartbeats)", c.SessionTimeout, 2*rpcopt.HeartbeatInterval))
	}
	if c.LeaveTimeout <= 0 {
		errs = append(errs, fmt.Errorf("leave timeout %v: must be positive", c.LeaveTimeout))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("retry backoff %v..%v: need 0 < min <= max", c.RetryMin, c.RetryMax))
	}
	if err := c.Ring.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid worker config: %w", err)
	}
	return nil
}
