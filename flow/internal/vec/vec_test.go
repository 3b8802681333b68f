package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The vector versions give bitwise the Go loops' results.
func TestVectorEqualsGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	k := AdamConsts{B1: 0.9, C1: 1 - float32(0.9), B2: 0.99, C2: 1 - float32(0.99), LR: 1.3e-3, Eps: 7e-5, Scale: 1.0 / 256, Decay: 1}
	for _, n := range []int{0, 1, 3, 4, 7, 8, 9, 31, 64, 1001} {
		k.Decay = 1
		if n%2 == 1 {
			k.Decay = 1 - 1.3e-3*0.1
		}
		p, g, m, v := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
		for i := range p {
			p[i] = float32(rng.NormFloat64())
			g[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(12)-6)))
			m[i] = float32(rng.NormFloat64() * 1e-2)
			v[i] = float32(rng.Float64() * 1e-3)
		}
		p2, m2, v2 := append([]float32(nil), p...), append([]float32(nil), m...), append([]float32(nil), v...)
		Adam(p, g, m, v, k)
		adamGo(p2, g, m2, v2, &k)
		for i := range p {
			if math.Float32bits(p[i]) != math.Float32bits(p2[i]) || math.Float32bits(m[i]) != math.Float32bits(m2[i]) || math.Float32bits(v[i]) != math.Float32bits(v2[i]) {
				t.Fatalf("n=%d element %d: vector (%v %v %v), Go (%v %v %v)", n, i, p[i], m[i], v[i], p2[i], m2[i], v2[i])
			}
		}
		var s [4]float64
		sumSquaresGo(g, &s)
		for _, x := range g[n&^3:] {
			s[0] += float64(x) * float64(x)
		}
		if got, want := SumSquares(g), (s[0]+s[1])+(s[2]+s[3]); math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("n=%d: sum of squares %v, Go %v", n, got, want)
		}
	}
}
