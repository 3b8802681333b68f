package flow

import (
	"fmt"
	"math"
)

// ScaleLimit bounds the log-scales FitScale sets: exp(±16) covers any pixel
// spread a dequantised image can have, and a dimension no sample moves gets
// the bound instead of an unbounded scale.
const ScaleLimit = 16

// FitScale sets the log-scales s to the values that maximise the summed
// log-likelihood of the n samples of x (n x Dim, natural pixel order), each
// dimension on its own, with the couplings as they are. The prior's
// log-density is concave in log|h| for the priors here, so each dimension's
// optimum is the one root of
//
//	n + sum_i h_i d/dh log p(h_i) = 0,  h_i = exp(s) z_i,
//
// found by bisection on [-ScaleLimit, ScaleLimit] in float64. Only pure-Go
// float64 arithmetic follows the forward pass, in a fixed order, so the
// result depends on nothing but the couplings' outputs. The samples go
// through w in batches of w.Max; z holds their outputs (at least n x Dim).
func (m *Model) FitScale(w *Workspace, x []float32, n int, z []float32) error {
	D := m.Config.Dim
	if n < 1 {
		return fmt.Errorf("fitting the scales: no samples")
	}
	if len(x) < n*D || len(z) < n*D {
		return fmt.Errorf("fitting the scales: buffers of %d and %d floats for %d samples of %d", len(x), len(z), n, D)
	}
	saved := append([]float32(nil), m.P.Scale...)
	clear(m.P.Scale) // h = z: the couplings' output in natural order
	for lo := 0; lo < n; lo += w.Max {
		c := min(w.Max, n-lo)
		m.Forward(w, x[lo*D:(lo+c)*D], c, z[lo*D:(lo+c)*D])
	}
	slope := logisticSlope
	if m.Config.Prior == Gaussian {
		slope = gaussianSlope
	}
	col := make([]float64, n)
	for j := range m.P.Scale {
		for i := range col {
			col[i] = float64(z[i*D+j])
		}
		s := fitOne(col, slope)
		if math.IsNaN(s) {
			copy(m.P.Scale, saved)
			return fmt.Errorf("fitting the scales: dimension %d has a non-finite output", j)
		}
		m.P.Scale[j] = float32(s)
	}
	return nil
}

// fitOne returns the s in [-ScaleLimit, ScaleLimit] where
// len(z) + sum slope(exp(s) z_i) changes sign (slope(h) = h d/dh log p(h) is
// non-positive and falls as |h| grows, so the sum falls as s grows), or the
// bound the root lies beyond. NaN if any z_i is not finite.
func fitOne(z []float64, slope func(float64) float64) float64 {
	for _, v := range z {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return math.NaN()
		}
	}
	n := float64(len(z))
	f := func(s float64) float64 {
		a := math.Exp(s)
		sum := n
		for _, v := range z {
			sum += slope(a * v)
		}
		return sum
	}
	lo, hi := -float64(ScaleLimit), float64(ScaleLimit)
	if f(hi) >= 0 {
		return hi
	}
	if f(lo) <= 0 {
		return lo
	}
	// 48 halvings leave an interval of 32/2^48, far below a float32's
	// resolution of s.
	for range 48 {
		mid := 0.5 * (lo + hi)
		if f(mid) > 0 {
			lo = mid
		} else {
			hi = mid
		}
	}
	return 0.5 * (lo + hi)
}

// logisticSlope is h d/dh log p(h) for the standard logistic: -h tanh(h/2).
func logisticSlope(h float64) float64 {
	a := math.Abs(h)
	e := math.Exp(-a)
	return -a * (1 - e) / (1 + e)
}

// gaussianSlope is h d/dh log p(h) for the standard normal: -h².
func gaussianSlope(h float64) float64 { return -h * h }
