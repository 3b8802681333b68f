package ring

import (
	"fmt"
	"net"
	"os"
	"testing"

	"google.golang.org/grpc"
)

// newGRPCCluster starts n members, each with its own grpc.Server on a
// loopback port, as workers have. Killing one stops its server and closes
// its transport: every stream it had ends at once.
func newGRPCCluster(t testing.TB, n int, cfg Config, fault FrameFault) *testCluster {
	t.Helper()
	return newGRPCClusterIn(t, "", n, cfg, fault)
}

// newLocalGRPCCluster is newGRPCCluster with a local folder: the members of
// even rank also serve a Unix socket there, and every member dials through
// the folder, so links from odd to even ranks take the socket and the
// others fall back to TCP.
func newLocalGRPCCluster(t testing.TB, n int, cfg Config, fault FrameFault) *testCluster {
	t.Helper()
	return newGRPCClusterIn(t, shortTempDir(t), n, cfg, fault)
}

// shortTempDir is a fresh folder with a path short enough for Unix sockets
// (t.TempDir's paths hold the test's name and can pass 107 bytes).
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ring")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newGRPCClusterIn(t testing.TB, dir string, n int, cfg Config, fault FrameFault) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	servers := make([]*grpc.Server, n)
	trs := make([]*GRPCTransport, n)
	for i := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(ServerOptions()...)
		tr := NewGRPCTransport()
		tr.RegisterServer(srv)
		go srv.Serve(lis)
		if dir != "" {
			tr.SetLocalDir(dir, nil)
			if i%2 == 0 {
				ul, err := ListenLocal(dir, lis.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				go srv.Serve(ul)
			}
		}
		servers[i], trs[i] = srv, tr
		var rt RingTransport = tr
		if fault != nil {
			rt = WithFaults(tr, fault)
		}
		m, err := NewMember(rt, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.members = append(c.members, m)
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("w%d", i), Addr: lis.Addr().String()})
		t.Cleanup(func() {
			m.Close()
			tr.Close()
			srv.Stop()
		})
	}
	c.kill = func(i int) {
		servers[i].Stop()
		trs[i].Close()
	}
	return c
}
