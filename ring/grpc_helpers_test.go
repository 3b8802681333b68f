package ring

import (
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
)

// newGRPCCluster starts n members, each with its own grpc.Server on a
// loopback port, as workers have. Killing one stops its server and closes
// its transport: every stream it had ends at once.
func newGRPCCluster(t testing.TB, n int, cfg Config, fault FrameFault) *testCluster {
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
