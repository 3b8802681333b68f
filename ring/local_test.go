package ring

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/internal/creds"
)

// localMember is one member of a hand-built ring whose transport the test
// keeps, to read its routes.
type localMember struct {
	tr   *GRPCTransport
	m    *Member
	addr string
}

// newLocalRing starts len(local) members dialing through dir; member i
// also serves its socket there when local[i]. b, if not nil, puts every
// link under the cluster's mutual TLS.
func newLocalRing(t *testing.T, dir string, local []bool, b *creds.Bundle) []localMember {
	t.Helper()
	ms := make([]localMember, len(local))
	for i := range local {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(append(ServerOptions(), b.ServerOption(nil))...)
		tr := NewGRPCTransport(b.DialOption())
		tr.SetLocalDir(dir, nil)
		tr.RegisterServer(srv)
		go srv.Serve(lis)
		if local[i] {
			ul, err := ListenLocal(dir, lis.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ul)
		}
		cfg := DefaultConfig()
		cfg.FrameTimeoutFloor = 10 * time.Second
		m, err := NewMember(tr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ms[i] = localMember{tr: tr, m: m, addr: lis.Addr().String()}
		t.Cleanup(func() { m.Close(); tr.Close(); srv.Stop() })
	}
	return ms
}

// reduceAll configures generation gen and all-reduces p floats (member i
// holds i+1 everywhere), then checks every member got the sum.
func reduceAll(t *testing.T, ms []localMember, gen uint64, p int) {
	t.Helper()
	peers := make([]Peer, len(ms))
	for i, lm := range ms {
		peers[i] = Peer{ID: "w" + string(rune('0'+i)), Addr: lm.addr}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make(chan error, len(ms))
	bufs := make([][]float32, len(ms))
	for i, lm := range ms {
		if err := lm.m.Configure(gen, i, peers); err != nil {
			t.Fatal(err)
		}
		bufs[i] = make([]float32, p)
		for j := range bufs[i] {
			bufs[i][j] = float32(i + 1)
		}
		go func() { errs <- lm.m.AllReduce(ctx, bufs[i]) }()
	}
	for range ms {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	want := float32(len(ms) * (len(ms) + 1) / 2)
	for i, b := range bufs {
		for j, v := range b {
			if v != want {
				t.Fatalf("member %d float %d: %v, want %v", i, j, v, want)
			}
		}
	}
}

func TestLocalRoutes(t *testing.T) {
	verifyNoLeaks(t)
	dir := shortTempDir(t)
	// Member i dials member i+1: 0→1 over TCP (1 serves no socket), 1→2
	// and 2→0 through the folder.
	ms := newLocalRing(t, dir, []bool{true, false, true}, nil)
	reduceAll(t, ms, 1, 100_003)
	want := [][2]int64{{0, 1}, {1, 0}, {1, 0}}
	for i, lm := range ms {
		local, tcp := lm.tr.Routes()
		if local != want[i][0] || tcp != want[i][1] {
			t.Errorf("member %d: %d connections through the folder and %d over TCP, want %d and %d", i, local, tcp, want[i][0], want[i][1])
		}
	}
}

func TestLocalRoutesUnderTLS(t *testing.T) {
	verifyNoLeaks(t)
	b, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := shortTempDir(t)
	ms := newLocalRing(t, dir, []bool{true, true}, b)
	reduceAll(t, ms, 1, 10_007)
	for i, lm := range ms {
		if local, tcp := lm.tr.Routes(); local != 1 || tcp != 0 {
			t.Errorf("member %d: routes %d local, %d TCP; want 1 and 0", i, local, tcp)
		}
	}

	// A process without the cluster's credentials that reaches the socket
	// is refused at the handshake, as over TCP.
	plain := newLocalRing(t, dir, []bool{false}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = plain[0].tr.Dial(ctx, StreamID{Generation: 1, From: Peer{ID: "x", Addr: plain[0].addr}, To: Peer{ID: "w0", Addr: ms[0].addr}, RingSize: 2})
	if err == nil {
		t.Fatal("a plaintext dial through the folder to a TLS member succeeded")
	}
	if local, _ := plain[0].tr.Routes(); local == 0 {
		t.Error("the plaintext dialer did not reach the socket, so the test showed nothing")
	}
}

func TestLocalSocketReplacesAStaleOne(t *testing.T) {
	verifyNoLeaks(t)
	dir := shortTempDir(t)
	// A process that died leaves its socket file behind.
	addr := "127.0.0.1:1"
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: LocalSocketPath(dir, addr), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Stat(LocalSocketPath(dir, addr)); err != nil {
		t.Fatalf("the stale socket is gone before the test: %v", err)
	}
	lis, err := ListenLocal(dir, addr)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	// A second process with the same address is refused while the first
	// serves.
	if _, err := ListenLocal(dir, addr); err == nil || !strings.Contains(err.Error(), "another process serves it") {
		t.Errorf("a second listener on a live socket: %v", err)
	}
	lis.Close()
	if _, err := os.Stat(LocalSocketPath(dir, addr)); !os.IsNotExist(err) {
		t.Errorf("closing the listener left its socket: %v", err)
	}

	// A dialer whose peer's socket is stale goes over TCP.
	ms := newLocalRing(t, dir, []bool{false, false}, nil)
	for _, lm := range ms {
		st, err := net.ListenUnix("unix", &net.UnixAddr{Name: LocalSocketPath(dir, lm.addr), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		st.SetUnlinkOnClose(false)
		st.Close()
	}
	reduceAll(t, ms, 1, 1000)
	for i, lm := range ms {
		if local, tcp := lm.tr.Routes(); local != 0 || tcp != 1 {
			t.Errorf("member %d: routes %d local, %d TCP past a stale socket; want 0 and 1", i, local, tcp)
		}
	}
}

func TestLocalDirRefusals(t *testing.T) {
	dir := shortTempDir(t)
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenLocal(open, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Errorf("a world-writable folder: %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenLocal(file, "127.0.0.1:1"); err == nil {
		t.Error("a file as the folder was accepted")
	}
	if err := os.WriteFile(LocalSocketPath(dir, "127.0.0.1:2"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenLocal(dir, "127.0.0.1:2"); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a plain file in the socket's place: %v", err)
	}
	if err := PrepareLocalDir(""); err == nil {
		t.Error("an empty folder path was accepted")
	}
	// A new folder is made private.
	fresh := filepath.Join(dir, "a", "b")
	if err := PrepareLocalDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("a new folder: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

func TestLocalSocketPath(t *testing.T) {
	if got := LocalSocketPath("/run/nice", "127.0.0.1:7100"); got != "/run/nice/127.0.0.1_3a7100.sock" {
		t.Errorf("got %s", got)
	}
	if LocalSocketPath("/d", "h:1") == LocalSocketPath("/d", "h_1") {
		t.Error("two addresses share a socket")
	}
	long := "/" + strings.Repeat("d", 70)
	a := LocalSocketPath(long, "[fe80::1234:5678:9abc:def0%eth0]:7100")
	b := LocalSocketPath(long, "[fe80::1234:5678:9abc:def0%eth1]:7100")
	if len(a) > maxSocketPath || len(b) > maxSocketPath || a == b || filepath.Dir(a) != long {
		t.Errorf("long paths: %s (%d), %s (%d)", a, len(a), b, len(b))
	}
	if _, err := ListenLocal("/"+strings.Repeat("d", 90), "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("a folder too long for a socket: %v", err)
	}
}
