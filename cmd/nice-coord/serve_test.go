package main

import (
	"context"
	"flag"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/nice-flow/nice/coordinator/checkpoint"
)

// serve --listen 127.0.0.1:0 notes the port it picked, not port 0, where
// `nice-coord status` looks for the coordinator.
func TestServeNotesThePickedPort(t *testing.T) {
	dir := t.TempDir()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var sf serveFlags
	addServeFlags(fs, &sf, ":7000", ":7080", ":7946")
	if err := fs.Parse([]string{"--listen", "127.0.0.1:0", "--http", "", "--gossip", "", "--state-dir", dir,
		"--couplings", "2", "--hidden", "8", "--layers", "1", "--samples", "0"}); err != nil {
		t.Fatal(err)
	}
	srv, _, err := sf.start(checkpoint.NewMemory(checkpoint.MemoryOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	t.Cleanup(func() { srv.Serve(ctx) })
	b, err := os.ReadFile(addrFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	noted := strings.TrimSpace(string(b))
	_, port, err := net.SplitHostPort(noted)
	if err != nil || port == "0" {
		t.Fatalf("address file holds %q: want the picked port", noted)
	}
	if _, lisPort, _ := net.SplitHostPort(srv.Addr()); lisPort != port {
		t.Errorf("address file holds %q, the coordinator listens on %s", noted, srv.Addr())
	}
}
