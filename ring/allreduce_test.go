package ring

import (
	"fmt"
	"testing"
)

// modelFloats is the 19.2 M floats of the NICE model's gradient.
const modelFloats = 19_200_000

func TestAllReduceSums(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			for n := 1; n <= 8; n++ {
				lengths := []int{0, 1, 10007}
				if n > 2 {
					lengths = append(lengths, n-1)
				}
				if bigCase(tr.name, n) {
					lengths = append(lengths, modelFloats)
				}
				for _, p := range lengths {
					t.Run(fmt.Sprintf("N=%d/P=%d", n, p), func(t *testing.T) {
						testAllReduceSums(t, tr.make, n, p)
					})
				}
			}
		})
	}
}

func testAllReduceSums(t *testing.T, mk clusterMaker, n, p int) {
	verifyNoLeaks(t)
	cfg := DefaultConfig()
	cfg.FrameTimeoutFloor = 10e9 // a loaded test machine must not look like a dead peer
	c := mk(t, n, cfg, nil)
	c.configure(1)
	bufs := makeBufs(n, p)
	sum, mag := inputs(bufs, 42)
	c.mustAllReduce(bufs)
	checkSum(t, bufs, sum, mag)
	first := append([]float32(nil), bufs[0]...)
	// Same inputs again, same generation: the same bits.
	inputs(bufs, 42)
	c.mustAllReduce(bufs)
	if !bitsEqual(bufs[0], first) {
		t.Fatal("a second all-reduce of the same inputs gave other bits")
	}
	for i := 1; i < n; i++ {
		if !bitsEqual(bufs[i], first) {
			t.Fatalf("second run: member %d differs", i)
		}
	}
}
