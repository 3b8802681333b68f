//go:build !purego

package vec

import "golang.org/x/sys/cpu"

//go:noescape
func adamAVX(p, grad, m, v *float32, n int, k *AdamConsts)

//go:noescape
func sumSquaresAVX(grad *float32, n int, s *[4]float64)

var haveAVX = cpu.X86.HasAVX

// adamVector updates the longest prefix it can and returns its length.
func adamVector(p, g, m, v []float32, k *AdamConsts) int {
	n := len(p) &^ 7
	if !haveAVX || n == 0 {
		return 0
	}
	adamAVX(&p[0], &g[0], &m[0], &v[0], n, k)
	return n
}

// sumSquaresVector adds the longest prefix it can into s and returns its length.
func sumSquaresVector(g []float32, s *[4]float64) int {
	n := len(g) &^ 3
	if !haveAVX || n == 0 {
		return 0
	}
	sumSquaresAVX(&g[0], n, s)
	return n
}
