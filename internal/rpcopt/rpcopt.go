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
	"context"
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

// Message and stream limits, sized from what the protocol needs, so that a
// peer cannot make a server or client buffer more than that.
const (
	// MaxWorkerMessage bounds what a worker sends the coordinator (Hello,
	// Ready, Report, ...: a few hundred bytes) and the requests of status
	// clients and state receivers.
	MaxWorkerMessage = 64 << 10
	// MaxCoordinatorMessage bounds what the coordinator sends on a session
	// or as a status or checkpoint listing: the largest is a Plan naming
	// every ring member (an id and an address each) or the status of every
	// worker, a few hundred bytes per worker.
	MaxCoordinatorMessage = 1 << 20
	// MaxStreamsPerConn bounds the calls open at once on one connection to
	// a server. A peer needs a few: a session, a ring stream per
	// generation while the next one opens, a state transfer, a status.
	MaxStreamsPerConn = 32
	// MaxHeaderBytes bounds the metadata of a call (the ring's hello, the
	// largest, is well under 1 KiB).
	MaxHeaderBytes = 16 << 10
)

// ServerLimits bounds what a client can make a server hold: messages of at
// most maxRecv bytes in and maxSend out, MaxStreamsPerConn calls per
// connection, MaxHeaderBytes of metadata per call.
func ServerLimits(maxRecv, maxSend int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.MaxSendMsgSize(maxSend),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
	}
}

// WorkerCallLimits are the message limits of a worker's calls to the
// coordinator (and of the status commands).
func WorkerCallLimits() []grpc.CallOption {
	return []grpc.CallOption{grpc.MaxCallRecvMsgSize(MaxCoordinatorMessage), grpc.MaxCallSendMsgSize(MaxWorkerMessage)}
}

// DefaultUnaryTimeout bounds a unary call on the server's side (a status,
// a checkpoint listing that verifies every checkpoint): a client that set
// no deadline does not hold the server's work for longer.
const DefaultUnaryTimeout = 30 * time.Second

// UnaryTimeout gives every unary call a deadline of d on the server's side
// (the client's own deadline still applies when it is sooner).
func UnaryTimeout(d time.Duration) grpc.ServerOption {
	return grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return handler(ctx, req)
	})
}
