package creds

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// unixClear wraps the cluster's TLS credentials for connections that may
// arrive over a Unix socket (the ring's local links). Over TCP it is the
// wrapped credentials, unchanged. Over a Unix socket both ends run the same
// mutual TLS 1.3 handshake, so a peer without the cluster's credentials is
// refused exactly as over TCP, and then carry the stream in the clear: it
// never leaves the kernel, and only the socket folder's owner (or root) can
// create the sockets there that a man in the middle would need (see
// ring.PrepareLocalDir). That saves the AES-GCM of every byte of the
// gradients, a third of a ring member's CPU under TLS.
type unixClear struct {
	credentials.TransportCredentials
	client, server *tls.Config
}

func (u unixClear) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := raw.(*net.UnixConn); !ok || u.client == nil {
		return u.TransportCredentials.ClientHandshake(ctx, authority, raw)
	}
	return handshakeThenClear(ctx, raw, u.client, false)
}

func (u unixClear) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := raw.(*net.UnixConn); !ok || u.server == nil {
		return u.TransportCredentials.ServerHandshake(raw)
	}
	return handshakeThenClear(context.Background(), raw, u.server, true)
}

func (u unixClear) Clone() credentials.TransportCredentials {
	c := unixClear{TransportCredentials: u.TransportCredentials.Clone()}
	if u.client != nil {
		c.client = u.client.Clone()
	}
	if u.server != nil {
		c.server = u.server.Clone()
	}
	return c
}

// handshakeThenClear runs a TLS handshake over raw and returns raw itself,
// positioned just after the handshake's last record. TLS reads the socket
// through a recordReader, which never hands it a byte past the record it is
// reading, so none of the peer's clear bytes that follow the handshake are
// swallowed; and the server sends no session tickets, so no TLS record
// follows the handshake on the wire either.
func handshakeThenClear(ctx context.Context, raw net.Conn, cfg *tls.Config, server bool) (net.Conn, credentials.AuthInfo, error) {
	rr := &recordReader{Conn: raw}
	var tc *tls.Conn
	if server {
		cfg = cfg.Clone()
		cfg.SessionTicketsDisabled = true
		tc = tls.Server(rr, cfg)
	} else {
		tc = tls.Client(rr, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, err
	}
	if !rr.atBoundary() {
		raw.Close()
		return nil, nil, errors.New("tls: the handshake over a Unix socket ended inside a record")
	}
	st := tc.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		raw.Close()
		return nil, nil, fmt.Errorf("tls: version %#x over a Unix socket, want TLS 1.3", st.Version)
	}
	return raw, credentials.TLSInfo{State: st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

// recordHeaderLen is the length of a TLS record's header: type, version,
// and the length of the body.
const recordHeaderLen = 5

// recordReader passes reads through to the connection, but never past the
// end of the TLS record being read: a read returns at most the rest of the
// current header, or of the current body.
type recordReader struct {
	net.Conn
	hdr  [recordHeaderLen]byte
	hdrN int // header bytes read of the current record
	left int // body bytes not yet read of the current record
}

func (r *recordReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.left > 0 {
		p = p[:min(len(p), r.left)]
		n, err := r.Conn.Read(p)
		r.left -= n
		return n, err
	}
	p = p[:min(len(p), recordHeaderLen-r.hdrN)]
	n, err := r.Conn.Read(p)
	copy(r.hdr[r.hdrN:], p[:n])
	r.hdrN += n
	if r.hdrN == recordHeaderLen {
		r.left = int(binary.BigEndian.Uint16(r.hdr[3:]))
		r.hdrN = 0
	}
	return n, err
}

// atBoundary reports whether every record begun was read to its end.
func (r *recordReader) atBoundary() bool { return r.hdrN == 0 && r.left == 0 }
