package flow

import "math"

// Gradient runs the n samples of x (n x Dim, natural pixel order) forward and
// backward, writes into grad (laid out like Params) the gradient of the SUM of
// their log-likelihoods, and returns that sum. grad is overwritten, not added to.
func (m *Model) Gradient(w *Workspace, x []float32, n int, grad []float32) float64 {
	m.check(w, n, x)
	if len(grad) != len(m.Params) {
		panic("flow: gradient buffer does not match the parameters")
	}
	total := m.run(w, x, n)
	gv := w.views(m.Layout, grad)
	D := m.Config.Dim

	// Through the prior and the scaling: h_j = z_j exp(s_j), log p gains s_j.
	g := w.g[:n*D]
	ds := gv.Scale
	for j := range ds {
		ds[j] = float32(n)
	}
	for i := 0; i < n; i++ {
		hi, ghi, gi := w.h[i*D:(i+1)*D], w.gh[i*D:(i+1)*D], g[i*D:(i+1)*D]
		for j, gh := range ghi {
			ds[j] += gh * hi[j]
		}
		for p, j := range m.perm {
			gi[p] = ghi[j] * w.expS[j]
		}
	}

	// Through the couplings, last first: y1 = x1, y2 = x2 + m(x1), so
	// dL/dx2 = dL/dy2 and dL/dx1 = dL/dy1 + J_m(x1)^T dL/dy2.
	for k := m.Config.Couplings - 1; k >= 0; k-- {
		x1, x2 := m.halves(k)
		in := w.state(k, n)
		layers := m.P.Couplings[k].Layers
		glayers := gv.Couplings[k].Layers
		delta, ldd := g[x2:], D
		next := w.d1
		for l := len(layers) - 1; l >= 0; l-- {
			b := backLayer{d: layers[l], gd: glayers[l], delta: delta, ldd: ldd, n: n}
			if l == 0 {
				b.a, b.lda = in[x1:], D
			} else {
				b.a, b.lda = w.activation(k, l-1, n), b.d.In
			}
			switch {
			case l > 0:
				b.gin, b.ldg, b.mask = next[:n*b.d.In], b.d.In, true
			case k > 0:
				b.gin, b.ldg, b.accumulate = g[x1:], D, true
			}
			w.backward(b)
			if l > 0 {
				delta, ldd = b.gin, b.d.In
				if &next[0] == &w.d1[0] {
					next = w.d2
				} else {
					next = w.d1
				}
			}
		}
	}
	return total
}

// reluMask zeroes d wherever the ReLU output a is not positive. a comes
// from layer's ReLU, so it is +0 or positive; the mask is all ones exactly when
// a's bits are not zero, computed without a branch (see layer).
func reluMask(d, a []float32) {
	a = a[:len(d)]
	for i, v := range a {
		mask := uint32(int32(-math.Float32bits(v)) >> 31)
		d[i] = math.Float32frombits(math.Float32bits(d[i]) & mask)
	}
}

// views returns views of grad, cached so that a training loop reusing one
// gradient buffer does not allocate.
func (w *Workspace) views(l Layout, grad []float32) Views {
	if w.gradBuf != &grad[0] {
		w.gradViews = l.Views(grad)
		w.gradBuf = &grad[0]
	}
	return w.gradViews
}
