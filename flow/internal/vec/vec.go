// Package vec holds the memory-bound passes of the optimiser over whole
// parameter buffers, vectorised where the CPU allows. Every version performs
// the same float operations in the same order as the Go one (no fused
// multiply-adds), so results are bitwise the same on every machine and build.
package vec

import "math"

// AdamConsts are one Adam update's constants, in the order the assembly reads them.
type AdamConsts struct {
	B1, C1, B2, C2, LR, Eps, Scale, Decay float32
}

// Adam applies one update to len(p) elements: with gi = g*Scale,
// m = B1 m + C1 gi, v = B2 v + C2 gi², p = Decay p + LR m / (√v + Eps).
// Decay 1 leaves p's scale as it is (p*1 is exact, so the result is then
// bitwise that of p + LR m / (√v + Eps)).
func Adam(p, g, m, v []float32, k AdamConsts) {
	g, m, v = g[:len(p)], m[:len(p)], v[:len(p)]
	n := adamVector(p, g, m, v, &k)
	adamGo(p[n:], g[n:], m[n:], v[n:], &k)
}

func adamGo(p, g, m, v []float32, k *AdamConsts) {
	g, m, v = g[:len(p)], m[:len(p)], v[:len(p)]
	for i := range p {
		gi := g[i] * k.Scale
		mi := k.B1*m[i] + k.C1*gi
		vi := k.B2*v[i] + k.C2*gi*gi
		m[i], v[i] = mi, vi
		p[i] = float32(p[i]*k.Decay) + k.LR*mi/(float32(math.Sqrt(float64(vi)))+k.Eps)
	}
}

// SumSquares returns the sum of the squares of g in float64, accumulated in
// four running sums (element i into sum i mod 4, in order) combined as
// (s0+s1)+(s2+s3).
func SumSquares(g []float32) float64 {
	var s [4]float64
	n := sumSquaresVector(g, &s)
	sumSquaresGo(g[n:len(g)&^3], &s)
	for _, x := range g[len(g)&^3:] {
		s[0] += float64(x) * float64(x)
	}
	return (s[0] + s[1]) + (s[2] + s[3])
}

func sumSquaresGo(g []float32, s *[4]float64) {
	for i := 0; i+4 <= len(g); i += 4 {
		s[0] += float64(g[i]) * float64(g[i])
		s[1] += float64(g[i+1]) * float64(g[i+1])
		s[2] += float64(g[i+2]) * float64(g[i+2])
		s[3] += float64(g[i+3]) * float64(g[i+3])
	}
}
