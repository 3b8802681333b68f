package flow

import (
	"hash/crc32"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/nice-flow/nice/internal/f32"
)

// TestGradNormDigestEqualsTheTwoPasses checks the fused pass against
// GradNorm and a CRC-32C of the whole slice, bit for bit, at sizes that
// leave chunks empty, uneven and large.
func TestGradNormDigestEqualsTheTwoPasses(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 7, 63, 64, 65, 1000, 300007} {
		g := make([]float32, n)
		for i := range g {
			g[i] = float32(rng.NormFloat64() * 1e3)
		}
		a := NewAdam(DefaultAdam(), n)
		norm, crc := a.GradNormDigest(g)
		if want := a.GradNorm(g); math.Float64bits(norm) != math.Float64bits(want) {
			t.Errorf("n %d: fused norm %v, GradNorm %v", n, norm, want)
		}
		if want := crc32.Checksum(f32.Bytes(g), crc32.MakeTable(crc32.Castagnoli)); crc != want {
			t.Errorf("n %d: fused CRC %08x, the slice's CRC-32C is %08x", n, crc, want)
		}
		g[n/2] = float32(math.NaN())
		if norm, _ := a.GradNormDigest(g); !math.IsNaN(norm) {
			t.Errorf("n %d: a NaN in the gradient gave the norm %v", n, norm)
		}
	}
}

func TestGradNormDigestAllocatesNothing(t *testing.T) {
	g := make([]float32, 10000)
	a := NewAdam(DefaultAdam(), len(g))
	if allocs := testing.AllocsPerRun(20, func() { a.GradNormDigest(g) }); allocs != 0 {
		t.Errorf("GradNormDigest allocated %v times a call", allocs)
	}
}
