package creds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials"
)

// connPair returns the two ends of a connection over network, "unix" (a
// socket in a fresh folder) or "tcp" (loopback): the server's end first.
func connPair(t *testing.T, network string) (server, client net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		dir, err := os.MkdirTemp("", "creds")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		addr = filepath.Join(dir, "s")
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := lis.Accept()
		accepted <- c
	}()
	client, err = net.Dial(network, lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

type handshakeResult struct {
	conn net.Conn
	info credentials.AuthInfo
	err  error
}

// handshake runs both ends' handshakes at once.
func handshake(t *testing.T, srv, cli credentials.TransportCredentials, sraw, craw net.Conn) (s, c handshakeResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sraw.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan handshakeResult, 1)
	go func() {
		conn, info, err := srv.ServerHandshake(sraw)
		done <- handshakeResult{conn, info, err}
	}()
	conn, info, err := cli.ClientHandshake(ctx, ServerName, craw)
	c = handshakeResult{conn, info, err}
	s = <-done
	sraw.SetDeadline(time.Time{})
	return s, c
}

// Over a Unix socket, the cluster's credentials authenticate both ends by
// the TLS handshake, and then the bytes each end writes, at once and
// without waiting for the other, reach the other end whole and in the
// clear: the handshake swallowed none of them.
func TestUnixSocketHandshakeThenClear(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := generate(t)
	for i := range 20 {
		sraw, craw := connPair(t, "unix")
		s, c := handshake(t, b.serverCreds(), b.clientCreds(), sraw, craw)
		if s.err != nil || c.err != nil {
			t.Fatalf("round %d: handshakes: server %v, client %v", i, s.err, c.err)
		}
		if s.conn != sraw || c.conn != craw {
			t.Fatalf("round %d: the connections after the handshake are not the sockets themselves", i)
		}
		for _, info := range []credentials.AuthInfo{s.info, c.info} {
			ti, ok := info.(credentials.TLSInfo)
			if !ok || ti.State.Version != tls.VersionTLS13 || len(ti.State.PeerCertificates) == 0 {
				t.Fatalf("round %d: auth info %#v: want TLS 1.3 with the peer's certificate", i, info)
			}
		}
		// Both ends write first, then read.
		msg := map[bool][]byte{true: make([]byte, 100_000+i), false: make([]byte, 1+i)}
		rand.Read(msg[true])
		rand.Read(msg[false])
		errs := make(chan error, 2)
		for _, side := range []bool{true, false} {
			conn, other := s.conn, msg[false]
			if !side {
				conn, other = c.conn, msg[true]
			}
			go func() {
				if _, err := conn.Write(msg[side]); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(other))
				if _, err := io.ReadFull(conn, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, other) {
					errs <- io.ErrUnexpectedEOF
					return
				}
				errs <- nil
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: after the handshake: %v", i, err)
			}
		}
	}
}

// Over a Unix socket as over TCP, a peer without the cluster's credentials
// (another CA's, or none) is refused at the handshake.
func TestUnixSocketRefusesStrangers(t *testing.T) {
	defer goleak.VerifyNone(t)
	b, other := generate(t), generate(t)
	sraw, craw := connPair(t, "unix")
	s, c := handshake(t, b.serverCreds(), other.clientCreds(), sraw, craw)
	if s.err == nil || c.err == nil {
		t.Fatalf("another CA's client: server %v, client %v; want both refused", s.err, c.err)
	}
	// A client that sends plain bytes (gRPC's preface) instead of a
	// ClientHello.
	sraw, craw = connPair(t, "unix")
	go craw.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	sraw.SetDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := b.serverCreds().ServerHandshake(sraw); err == nil || !strings.Contains(err.Error(), "tls") {
		t.Fatalf("a plaintext client: %v; want a TLS error", err)
	}
}

// Over TCP the credentials are TLS as before: what crosses the socket is
// not what was written.
func TestTCPStaysEncrypted(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := generate(t)
	sraw, craw := connPair(t, "tcp")
	s, c := handshake(t, b.serverCreds(), b.clientCreds(), sraw, craw)
	if s.err != nil || c.err != nil {
		t.Fatalf("handshakes: server %v, client %v", s.err, c.err)
	}
	msg := bytes.Repeat([]byte("gradient "), 100)
	if _, err := c.conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	// Read what arrived below the server's TLS.
	wire := make([]byte, len(msg))
	sraw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(sraw, wire); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wire, []byte("gradient")) {
		t.Fatal("over TCP the bytes crossed the socket in the clear")
	}
}

// recordReader never returns a byte past the end of the record it is in,
// whatever the buffer it is given, so what follows the last record stays in
// the connection.
func TestRecordReaderStopsAtRecords(t *testing.T) {
	var wire bytes.Buffer
	for _, n := range []int{0, 1, 300, 16384 + 256} {
		hdr := []byte{23, 3, 3, 0, 0}
		binary.BigEndian.PutUint16(hdr[3:], uint16(n))
		wire.Write(hdr)
		wire.Write(bytes.Repeat([]byte{byte(n)}, n))
	}
	records := wire.Len()
	wire.WriteString("after the handshake")
	a, z := net.Pipe()
	defer a.Close()
	defer z.Close()
	go func() { a.Write(wire.Bytes()) }()
	rr := &recordReader{Conn: z}
	got := 0
	buf := make([]byte, 1<<16)
	for got < records {
		n, err := rr.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	if got != records || !rr.atBoundary() {
		t.Fatalf("read %d bytes of %d in records (at a boundary: %v)", got, records, rr.atBoundary())
	}
	rest := make([]byte, len("after the handshake"))
	if _, err := io.ReadFull(z, rest); err != nil || string(rest) != "after the handshake" {
		t.Fatalf("after the records: %q, %v", rest, err)
	}
}

// gatedConn holds its reads, once it has been written to, until gate is
// closed: the server's second read of the handshake then finds the client's
// whole last flight and the clear bytes after it in the socket at once.
type gatedConn struct {
	net.Conn
	wrote atomic.Bool
	gate  chan struct{}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.wrote.Store(true)
	return g.Conn.Write(p)
}

func (g *gatedConn) Read(p []byte) (int, error) {
	if g.wrote.Load() {
		<-g.gate
	}
	return g.Conn.Read(p)
}

// The server's handshake leaves the clear bytes that the client wrote right
// after its own handshake in the socket, even when they arrived with the
// handshake's last records.
func TestServerHandshakeLeavesWhatFollows(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := generate(t)
	sraw, craw := connPair(t, "unix")
	g := &gatedConn{Conn: sraw, gate: make(chan struct{})}
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, _, err := handshakeThenClear(context.Background(), g, b.ServerTLS(), true)
		done <- result{conn, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := b.clientCreds().ClientHandshake(ctx, ServerName, craw)
	if err != nil {
		close(g.gate)
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("first clear bytes")); err != nil {
		t.Fatal(err)
	}
	close(g.gate)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := make([]byte, len("first clear bytes"))
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r.conn, got); err != nil || string(got) != "first clear bytes" {
		t.Fatalf("after the server's handshake: %q, %v", got, err)
	}
}
