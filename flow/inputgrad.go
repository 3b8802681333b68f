package flow

// InputGradient runs the n samples of x (n x Dim, natural pixel order)
// forward and backward, writes d log p(x_i) / d x_i of each sample into gx
// (n x Dim, natural pixel order; overwritten), writes the per-sample
// log-likelihoods into ll (if it is not nil) and returns their sum.
//
// It is the backward pass of Gradient carried down to the input instead of
// into the parameters: the couplings are volume-preserving and the scaling's
// log-determinant does not depend on x, so the gradient of log p(x) is the
// prior's gradient pulled back through the flow. Inpainting climbs it.
func (m *Model) InputGradient(w *Workspace, x []float32, n int, gx []float32, ll []float64) float64 {
	m.check(w, n, x, gx)
	total := m.run(w, x, n)
	copy(ll, w.ll[:n])
	D, half := m.Config.Dim, m.Config.Dim/2

	// Through the prior and the scaling: h_j = z_j exp(s_j).
	g := w.g[:n*D]
	for i := 0; i < n; i++ {
		ghi, gi := w.gh[i*D:(i+1)*D], g[i*D:(i+1)*D]
		for p, j := range m.perm {
			gi[p] = ghi[j] * w.expS[j]
		}
	}

	// Through the couplings, last first: dL/dx1 = dL/dy1 + J_m(x1)^T dL/dy2,
	// dL/dx2 = dL/dy2.
	for k := m.Config.Couplings - 1; k >= 0; k-- {
		x1, x2 := m.halves(k)
		layers := m.P.Couplings[k].Layers
		delta, ldd := g[x2:], D
		next := w.d1
		for l := len(layers) - 1; l > 0; l-- {
			d := layers[l]
			a := w.activation(k, l-1, n)
			nd := next[:n*d.In]
			gemm(false, true, n, d.In, d.Out, 1, delta, ldd, d.W, d.Out, 0, nd, d.In)
			reluMask(nd, a)
			delta, ldd = nd, d.In
			if &next[0] == &w.d1[0] {
				next = w.d2
			} else {
				next = w.d1
			}
		}
		d := layers[0]
		gemm(false, true, n, half, d.Out, 1, delta, ldd, d.W, d.Out, 1, g[x1:], D)
	}

	for i := 0; i < n; i++ {
		gi, oi := g[i*D:(i+1)*D], gx[i*D:(i+1)*D]
		for p, j := range m.perm {
			oi[j] = gi[p]
		}
	}
	return total
}
