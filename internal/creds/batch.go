package creds

import (
	"bufio"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// batchBytes is how much a connection under TLS reads or writes per system
// call at most. TLS cuts a stream into records of 16 KiB and reads and
// writes the socket once per record; the ring moves 77 MB per step each
// way, so batching records cuts those calls about sixteenfold.
const batchBytes = 256 << 10

// batching wraps transport credentials so that, once the handshake is
// done, the TLS records go to and come from the socket in batches (see
// batchedConn).
type batching struct {
	credentials.TransportCredentials
}

func (b batching) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	bc := &batchedConn{Conn: raw}
	conn, info, err := b.TransportCredentials.ClientHandshake(ctx, authority, bc)
	if err != nil {
		return nil, nil, err
	}
	bc.batch()
	return &flushingConn{Conn: conn, under: bc}, info, nil
}

func (b batching) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	bc := &batchedConn{Conn: raw}
	conn, info, err := b.TransportCredentials.ServerHandshake(bc)
	if err != nil {
		return nil, nil, err
	}
	bc.batch()
	return &flushingConn{Conn: conn, under: bc}, info, nil
}

func (b batching) Clone() credentials.TransportCredentials {
	return batching{b.TransportCredentials.Clone()}
}

// batchedConn is the socket as TLS sees it. During the handshake it passes
// everything through (the handshake waits for answers, so nothing may sit in
// a buffer, and a refused peer costs no buffer). Afterwards reads fill a
// buffer of batchBytes in one call, and writes collect the records of one
// write of the layer above until flushingConn flushes them (or batchBytes
// are pending).
type batchedConn struct {
	net.Conn
	batching atomic.Bool
	r        *bufio.Reader // set by batch, before batching is

	mu      sync.Mutex
	pending []byte
	queued  atomic.Int64 // len(pending), read without the lock
}

func (c *batchedConn) batch() {
	c.r = bufio.NewReaderSize(c.Conn, batchBytes)
	c.batching.Store(true)
}

func (c *batchedConn) Read(p []byte) (int, error) {
	if !c.batching.Load() {
		return c.Conn.Read(p)
	}
	return c.r.Read(p)
}

func (c *batchedConn) Write(p []byte) (int, error) {
	if !c.batching.Load() {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, p...)
	c.queued.Store(int64(len(c.pending)))
	if len(c.pending) >= batchBytes {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// flush writes what is pending.
func (c *batchedConn) flush() error {
	if c.queued.Load() == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *batchedConn) flushLocked() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending)
	c.pending = c.pending[:0]
	c.queued.Store(0)
	return err
}

// SetWriteDeadline first sends what is pending: it was written before the
// deadline changed (TLS sets a deadline of "now" right after its closing
// alert).
func (c *batchedConn) SetWriteDeadline(t time.Time) error {
	ferr := c.flush()
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return ferr
}

// SetDeadline is SetWriteDeadline for both directions.
func (c *batchedConn) SetDeadline(t time.Time) error {
	ferr := c.flush()
	if err := c.Conn.SetDeadline(t); err != nil {
		return err
	}
	return ferr
}

func (c *batchedConn) Close() error {
	ferr := c.flush()
	if err := c.Conn.Close(); err != nil {
		return err
	}
	return ferr
}

// flushingConn is the TLS connection as gRPC sees it: each write's records
// leave in one batch when the write returns; records TLS writes by itself
// while reading (a key update's answer) leave when the read returns.
type flushingConn struct {
	net.Conn
	under *batchedConn
}

func (c *flushingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if ferr := c.under.flush(); err == nil {
		err = ferr
	}
	return n, err
}

func (c *flushingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if ferr := c.under.flush(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}
