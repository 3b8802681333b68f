package creds

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ServerTLS is the TLS configuration of a server of the cluster: TLS 1.3,
// the node certificate, and a client certificate required and verified
// against the cluster CA. Nil without credentials.
func (b *Bundle) ServerTLS() *tls.Config {
	if b == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.cert},
		ClientCAs:    b.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientTLS is the TLS configuration of a client of the cluster: it
// presents the node certificate and accepts only a server certificate
// signed by the cluster CA for ServerName. Nil without credentials.
func (b *Bundle) ClientTLS() *tls.Config {
	if b == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.cert},
		RootCAs:      b.pool,
		ServerName:   ServerName,
	}
}

// DialOption is the transport security of a gRPC client: mutual TLS with
// credentials, plaintext without. Over a Unix socket (a ring's local link)
// the mutual TLS handshake authenticates both ends and the stream then
// stays in the clear (unixClear).
func (b *Bundle) DialOption() grpc.DialOption {
	if b == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(b.clientCreds())
}

// clientCreds and serverCreds are the transport credentials of the two
// ends: batched TLS over TCP, the TLS handshake and then the clear over a
// Unix socket.
func (b *Bundle) clientCreds() credentials.TransportCredentials {
	return unixClear{TransportCredentials: batching{credentials.NewTLS(b.ClientTLS())}, client: b.ClientTLS()}
}

func (b *Bundle) serverCreds() credentials.TransportCredentials {
	return unixClear{TransportCredentials: batching{credentials.NewTLS(b.ServerTLS())}, server: b.ServerTLS()}
}

// ServerOption is the transport security of a gRPC server: mutual TLS with
// credentials (handshakes refused are logged to log, nil meaning
// slog.Default(), at most once a second per peer host and ten lines a
// second in all), nothing without. Connections that arrive over a Unix
// socket are authenticated by the same handshake and then stay in the
// clear (unixClear).
func (b *Bundle) ServerOption(log *slog.Logger) grpc.ServerOption {
	return b.serverOption(log, time.Second)
}

func (b *Bundle) serverOption(log *slog.Logger, every time.Duration) grpc.ServerOption {
	if b == nil {
		return grpc.EmptyServerOption{}
	}
	if log == nil {
		log = slog.Default()
	}
	return grpc.Creds(&refusalLogging{TransportCredentials: b.serverCreds(),
		refusals: &refusals{log: log, limiter: &RefusalLimiter{Every: every}}})
}

// refusalLogging logs the server handshakes that fail: they are the
// clients without the cluster's credentials (gRPC itself says nothing at
// its default log level).
type refusalLogging struct {
	credentials.TransportCredentials
	refusals *refusals
}

func (c *refusalLogging) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	// A connection closed before it said anything (a port probe) is no
	// refusal.
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled) {
		c.refusals.note(conn.RemoteAddr(), err)
	}
	return out, info, err
}

func (c *refusalLogging) Clone() credentials.TransportCredentials {
	return &refusalLogging{TransportCredentials: c.TransportCredentials.Clone(), refusals: c.refusals}
}

// refusals logs refused handshakes through a RefusalLimiter.
type refusals struct {
	log     *slog.Logger
	limiter *RefusalLimiter
}

func (r *refusals) note(from net.Addr, err error) {
	addr, host := "unknown", ""
	if from != nil && from.Network() == "unix" {
		addr, host = "a Unix socket", "unix"
	} else if from != nil {
		addr = from.String()
		host = addr
		if h, _, splitErr := net.SplitHostPort(addr); splitErr == nil {
			host = h
		}
	}
	ok, dropped := r.limiter.Allow(host, time.Now())
	if !ok {
		return
	}
	r.log.Warn("refused a connection at the TLS handshake: the peer lacks this cluster's credentials",
		"from", addr, "err", err, "more_refused_from_this_host_since_last_line", dropped)
}
