package ring

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// testCluster is a ring of members on one transport kind, with the means to
// kill any of them.
type testCluster struct {
	t       testing.TB
	members []*Member
	peers   []Peer
	kill    func(i int)
}

// clusterMaker builds n members over one kind of transport; fault, if not
// nil, wraps the transports.
type clusterMaker func(t testing.TB, n int, cfg Config, fault FrameFault) *testCluster

var transports = []struct {
	name string
	make clusterMaker
}{
	{"inmem", newInmemCluster},
	{"grpc", newGRPCCluster},
	{"grpc-local", newLocalGRPCCluster},
}

func newInmemCluster(t testing.TB, n int, cfg Config, fault FrameFault) *testCluster {
	t.Helper()
	net := NewInmemNetwork()
	c := &testCluster{t: t}
	for i := range n {
		addr := fmt.Sprintf("inmem-%d", i)
		var tr RingTransport = net.Transport(addr)
		if fault != nil {
			tr = WithFaults(tr, fault)
		}
		m, err := NewMember(tr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.members = append(c.members, m)
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("w%d", i), Addr: addr})
		t.Cleanup(func() { m.Close(); tr.Close() })
	}
	c.kill = func(i int) { net.Kill(c.peers[i].Addr) }
	return c
}

// verifyNoLeaks checks, after every later cleanup ran, that the test left
// no goroutine behind.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
}

func (c *testCluster) configure(gen uint64) {
	c.t.Helper()
	for i, m := range c.members {
		if err := m.Configure(gen, i, c.peers); err != nil {
			c.t.Fatalf("member %d: %v", i, err)
		}
	}
}

// allReduce runs AllReduce on every member at once and returns each error
// and how long each took.
func (c *testCluster) allReduce(ctx context.Context, bufs [][]float32) ([]error, []time.Duration) {
	errs := make([]error, len(c.members))
	took := make([]time.Duration, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() {
			start := time.Now()
			errs[i] = m.AllReduce(ctx, bufs[i])
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	return errs, took
}

func (c *testCluster) mustAllReduce(bufs [][]float32) {
	c.t.Helper()
	errs, _ := c.allReduce(context.Background(), bufs)
	for i, err := range errs {
		if err != nil {
			c.t.Fatalf("member %d: %v", i, err)
		}
	}
}

// inputs fills bufs[i] with the deterministic input of member i and returns
// the float64 sum and the sum of magnitudes (for the tolerance).
func inputs(bufs [][]float32, seed uint64) (sum, mag []float64) {
	p := len(bufs[0])
	sum = make([]float64, p)
	mag = make([]float64, p)
	for i, b := range bufs {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		for j := range b {
			v := float32(rng.Float64()*2 - 1)
			b[j] = v
			sum[j] += float64(v)
			mag[j] += math.Abs(float64(v))
		}
	}
	return sum, mag
}

func makeBufs(n, p int) [][]float32 {
	bufs := make([][]float32, n)
	for i := range bufs {
		bufs[i] = make([]float32, p)
	}
	return bufs
}

// checkSum checks that every member holds the same bits and that they are
// the sum up to float32 rounding of n terms in some order.
func checkSum(t *testing.T, bufs [][]float32, sum, mag []float64) {
	t.Helper()
	n := len(bufs)
	const eps = 1.0 / (1 << 23)
	for j, v := range bufs[0] {
		if tol := float64(n)*eps*mag[j] + 1e-30; math.Abs(float64(v)-sum[j]) > tol {
			t.Fatalf("element %d: got %v, want %v ± %v", j, v, sum[j], tol)
		}
	}
	for i := 1; i < n; i++ {
		if !bitsEqual(bufs[i], bufs[0]) {
			t.Fatalf("member %d differs from member 0", i)
		}
	}
}

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for j := range a {
		if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
			return false
		}
	}
	return true
}
