// Package rpcopt holds the gRPC options the coordinator and the workers
// share, so that both ends of a session agree on keepalives.
//
// Keepalives are the failure signal of an idle connection: a container that
// is SIGKILLed or frozen leaves its TCP connections open without a reset,
// so without pings a session or a state transfer would wait on it forever.
// Their place in the project's hierarchy of timeouts is described in
// docs/design.md ("Timeouts").
package rpcopt

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Keepalive timing: a ping after KeepaliveTime of silence, the connection
// declared dead KeepaliveTimeout later. A dead peer thus shows within
// KeepaliveTime + KeepaliveTimeout of its last packet.
const (
	KeepaliveTime    = time.Second
	KeepaliveTimeout = 2 * time.Second
)

// ClientKeepalive makes a dead coordinator or peer show on a client
// connection even when no RPC is in flight.
var ClientKeepalive = keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}

// ServerKeepalive lets clients ping as often as ClientKeepalive does, and
// pings them in turn, so that either end notices a dead other end.
func ServerKeepalive() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
	}
}

// Session heartbeats: both ends of a worker's session send a Heartbeat
// every HeartbeatInterval, and end the session when they hear nothing for
// their session timeout (DefaultSessionTimeout unless configured). A worker
// thus notices a coordinator that vanished without a reset in seconds
// (gRPC's client keepalive cannot ping more often than every 10 s), and a
// heartbeat to a restarted coordinator's address is answered by a reset at
// once. The timeout must exceed the longest pause of a live process on a
// busy host: at 1.5 s, four full-size workers on two overloaded cores were
// dropped as silent every few seconds (silences of 1.6-2.4 s), so the
// default is 4 s; the coordinator's keepalive (above) still notices a dead
// connection in about 3 s.
const (
	HeartbeatInterval     = 250 * time.Millisecond
	DefaultSessionTimeout = 4 * time.Second
)
