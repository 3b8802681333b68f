package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/internal/creds"
)

// The ways a call to the coordinator fails, as a person must act on them.
// Each error a client command returns for a failed call wraps one.
var (
	// errNothingListens: the connection was refused; no process listens
	// at the address.
	errNothingListens = errors.New("nothing listens there")
	// errRefusedTLS: a process listens, but the TLS handshake failed: the
	// credentials are missing, another cluster's, or TLS was used against
	// a plaintext server or the other way round.
	errRefusedTLS = errors.New("refused (TLS/credentials)")
	// errTimedOut: no answer in time: the host is unreachable, a firewall
	// drops the packets, or what accepted the connection says nothing.
	errTimedOut = errors.New("timed out")
	// errNotGRPC: something answered, but not as a gRPC server.
	errNotGRPC = errors.New("not a gRPC server")
	// errAnswered: the coordinator answered the call with an error.
	errAnswered = errors.New("answered with an error")
)

// reachTimeout bounds a status call, and each step of a diagnosis.
const reachTimeout = 3 * time.Second

// reach is how a client reaches the coordinator: its address, its
// credentials (nil: plaintext) and the folder they came from (if known),
// and how long it waits for each answer.
type reach struct {
	addr    string
	bundle  *creds.Bundle
	tlsDir  string
	timeout time.Duration
}

// explainCallError turns the error of a call to the coordinator into one
// of the errors above, with what to do. A status the server sent
// is reported as such; a transport failure is diagnosed by connecting
// again, step by step (TCP, then TLS with the client's credentials, or
// plaintext HTTP/2 without),
// since gRPC reports every one of them as Unavailable.
func (r reach) explainCallError(ctx context.Context, callErr error) error {
	addr := r.addr
	if ctx.Err() != nil {
		return ctx.Err()
	}
	st, _ := status.FromError(callErr)
	switch code := st.Code(); code {
	case codes.Unavailable, codes.DeadlineExceeded:
	case codes.Unimplemented:
		return fmt.Errorf("%w: the server at %s answered %s: %s: a gRPC server other than the coordinator listens there "+
			"(a worker's?); pass the coordinator's gRPC address with --addr", errAnswered, addr, code, st.Message())
	default:
		return fmt.Errorf("%w: the coordinator at %s answered %s: %s", errAnswered, addr, code, st.Message())
	}
	if err := r.diagnose(ctx); err != nil {
		return err
	}
	// The transport works: the server itself answered (or failed) this way.
	return fmt.Errorf("%w: the coordinator at %s answered %s: %s", errAnswered, addr, st.Code(), st.Message())
}

// diagnose connects to r.addr as the client would and
// returns nil if it gets as far as an HTTP/2 server's first frame, else the
// reason it did not.
func (r reach) diagnose(ctx context.Context) error {
	conn, err := r.dialTCP(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if r.bundle == nil {
		return r.diagnosePlaintext(ctx, conn)
	}
	return r.diagnoseTLS(ctx, conn)
}

// dialTCP connects to r.addr, classifying a failure.
func (r reach) dialTCP(ctx context.Context) (net.Conn, error) {
	addr := r.addr
	dctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err == nil {
		return conn, nil
	}
	var dnsErr *net.DNSError
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%w: %s refused the connection: is the coordinator running? "+
			"start it with `nice-coord up` or `nice-coord serve`, or pass --addr (or set NICE_ADDR) with its gRPC address", errNothingListens, addr)
	case errors.As(err, &dnsErr):
		return nil, fmt.Errorf("%w: the host of %s is not known (%v): check --addr (or NICE_ADDR)", errTimedOut, addr, dnsErr)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return nil, fmt.Errorf("%w: %s cannot be reached (%v): check the address and the network between here and there", errTimedOut, addr, err)
	case isTimeout(err):
		return nil, fmt.Errorf("%w: no answer from %s within %v (the host is unreachable, or a firewall drops the packets): "+
			"check --addr (or NICE_ADDR) and that the port is open to this host", errTimedOut, addr, r.timeout)
	}
	return nil, fmt.Errorf("connecting to %s: %w", addr, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// silent is the error of a peer that took the connection and said nothing.
func (r reach) silent(during string) error {
	return fmt.Errorf("%w: %s took the connection but did not answer %s within %v: is it the coordinator's gRPC address "+
		"(not its HTTP or gossip port), or is the coordinator frozen?", errTimedOut, r.addr, during, r.timeout)
}

// diagnoseTLS completes a TLS handshake with the cluster's client
// configuration on conn, then an HTTP/2 greeting over it.
func (r reach) diagnoseTLS(ctx context.Context, conn net.Conn) error {
	addr := r.addr
	dir := "the folder of --tls-dir (or NICE_TLS_DIR)"
	if r.tlsDir != "" {
		dir = r.tlsDir
	}
	hctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	tc := tls.Client(conn, r.bundle.ClientTLS())
	err := tc.HandshakeContext(hctx)
	if err == nil {
		// With TLS 1.3 the server checks this client's certificate after
		// the client's handshake ends: its verdict arrives with its first
		// answer.
		err = greetHTTP2(tc, r.timeout)
		if err == nil {
			return nil
		}
	}
	var verr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var opErr *net.OpError
	var recErr tls.RecordHeaderError
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &unknownCA) || errors.As(err, &verr):
		return fmt.Errorf("%w: %s presents a certificate that the cluster CA in %s did not sign (%v): the credentials are "+
			"another cluster's; pass the --tls-dir of this cluster (or set NICE_TLS_DIR)", errRefusedTLS, addr, dir, err)
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return fmt.Errorf("%w: %s refused this client's certificate from %s (%v): the credentials are another cluster's; "+
			"pass the --tls-dir of this cluster (or set NICE_TLS_DIR)", errRefusedTLS, addr, dir, opErr.Err)
	case errors.As(err, &recErr) && bytes.HasPrefix(recErr.RecordHeader[:], []byte("HTTP/")):
		return notGRPC(addr, "in HTTP/1")
	case errors.As(err, &recErr), errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF):
		// Not TLS: is it a gRPC server without credentials?
		if perr := (reach{addr: addr, timeout: r.timeout}).diagnose(ctx); perr == nil {
			return fmt.Errorf("%w: %s runs without credentials (plaintext gRPC) but this client uses TLS with %s: "+
				"pass --insecure (or leave out --tls-dir and NICE_TLS_DIR)", errRefusedTLS, addr, dir)
		}
		return fmt.Errorf("%w: %s does not speak TLS (%v): check --addr (the coordinator's gRPC address); "+
			"if the cluster runs without credentials, pass --insecure", errRefusedTLS, addr, err)
	case errors.As(err, new(*notHTTP2)):
		return notGRPC(addr, "in TLS but not in HTTP/2")
	case isTimeout(err) && tc.ConnectionState().HandshakeComplete:
		return r.silent("an HTTP/2 greeting after the TLS handshake")
	case isTimeout(err):
		return r.silent("the TLS handshake")
	}
	return fmt.Errorf("%w: the TLS handshake with %s failed: %v", errRefusedTLS, addr, err)
}

// diagnosePlaintext greets the server at conn in plaintext HTTP/2 and
// explains an unexpected answer.
func (r reach) diagnosePlaintext(ctx context.Context, conn net.Conn) error {
	addr := r.addr
	err := greetHTTP2(conn, r.timeout)
	if err == nil {
		return nil
	}
	var notH2 *notHTTP2
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &notH2) && notH2.got[0] == 0x15 || errors.As(err, &notH2) && notH2.got[0] == 0x16:
		return requiresTLS(addr)
	case errors.As(err, &notH2) && bytes.HasPrefix(notH2.got, []byte("HTTP/")):
		return notGRPC(addr, "in HTTP/1")
	case errors.As(err, &notH2):
		return fmt.Errorf("%w: %s answered %q, not as a gRPC server: is it the coordinator's gRPC address "+
			"(serve's --listen, 7000 by default)?", errNotGRPC, addr, notH2.got)
	case isTimeout(err):
		return r.silent("a plaintext HTTP/2 greeting")
	}
	// Closed without a word, as a TLS server does with a client that
	// does not start a TLS handshake: ask in TLS whether it speaks it.
	if r.speaksTLS(ctx) {
		return requiresTLS(addr)
	}
	return fmt.Errorf("%w: %s closed the connection without answering (%v): is it the coordinator's gRPC address?", errNotGRPC, addr, err)
}

func requiresTLS(addr string) error {
	return fmt.Errorf("%w: %s requires TLS (the cluster runs with credentials) and this client speaks plaintext: "+
		"pass --tls-dir DIR (or set NICE_TLS_DIR) with the folder `nice-coord init` wrote for this cluster", errRefusedTLS, addr)
}

func notGRPC(addr, answer string) error {
	return fmt.Errorf("%w: %s answered %s, not as a gRPC server: is that the coordinator's HTTP port? "+
		"status asks its gRPC address (serve's --listen, 7000 by default)", errNotGRPC, addr, answer)
}

// speaksTLS reports whether the server at r.addr answers a TLS handshake.
// Nothing is sent over the connection: the server's certificate is not
// checked, only whether it answers in TLS at all.
func (r reach) speaksTLS(ctx context.Context) bool {
	conn, err := r.dialTCP(ctx)
	if err != nil {
		return false
	}
	defer conn.Close()
	hctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	err = tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}).HandshakeContext(hctx)
	var opErr *net.OpError
	// A server that requires a client certificate refuses this one in
	// TLS: a TLS alert is an answer in TLS.
	return err == nil || errors.As(err, &opErr) && opErr.Op == "remote error"
}

// http2Preface is what an HTTP/2 client sends first: the connection
// preface and an empty SETTINGS frame.
var http2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// notHTTP2 is an answer that is not an HTTP/2 frame header.
type notHTTP2 struct{ got []byte }

func (e *notHTTP2) Error() string { return fmt.Sprintf("not an HTTP/2 answer: %q", e.got) }

// greetHTTP2 sends the HTTP/2 preface on conn and reads the server's first
// frame header: nil if it is SETTINGS, as an HTTP/2 server sends first.
func greetHTTP2(conn net.Conn, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(http2Preface); err != nil {
		return err
	}
	// A frame header is 9 bytes; a little more shows what another kind
	// of server says.
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(conn, buf, 9)
	if n > 0 && (n < 9 || buf[3] != 4) {
		return &notHTTP2{got: buf[:n]}
	}
	return err
}
