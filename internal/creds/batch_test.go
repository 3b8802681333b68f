package creds

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials"
)

// Through batched TLS, bytes arrive whole and in order in both directions,
// for writes of every size, and what is written just before Close arrives
// too.
func TestBatchedTLSCarriesEveryByte(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := generate(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	payload := make([]byte, 3*batchBytes+12345)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	// The server echoes what it reads, then closes after the last byte.
	served := make(chan error, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		conn, _, err := batching{credentials.NewTLS(b.ServerTLS())}.ServerHandshake(raw)
		if err != nil {
			raw.Close()
			served <- err
			return
		}
		_, err = io.CopyN(conn, conn, int64(len(payload)))
		if cerr := conn.Close(); err == nil {
			err = cerr
		}
		served <- err
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := batching{credentials.NewTLS(b.ClientTLS())}.ClientHandshake(ctx, ServerName, raw) // gRPC passes the authority, ServerName (Info)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		// Writes of growing sizes: below a record, several records, above
		// the batch.
		rest, size := payload, 1
		for len(rest) > 0 {
			n := min(size, len(rest))
			if _, err := conn.Write(rest[:n]); err != nil {
				wrote <- err
				return
			}
			rest, size = rest[n:], size*3
		}
		wrote <- nil
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes came back as %d bytes, not the same", len(payload), len(got))
	}
}
