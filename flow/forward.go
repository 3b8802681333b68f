package flow

import "math"

// layer writes into out (rows of leading dimension ldo) columns [c0, c1) of
// dense layer d applied to the n rows of a (leading dimension lda): beta*out
// plus a W + B, through a ReLU when relu.
func layer(d Dense, n, c0, c1 int, a []float32, lda int, beta float32, out []float32, ldo int, relu bool) {
	if c0 >= c1 || n == 0 {
		return
	}
	gemm(false, false, n, c1-c0, d.In, 1, a, lda, d.W[c0:], d.Out, beta, out[c0:], ldo)
	b := d.B[c0:c1]
	for i := 0; i < n; i++ {
		row := out[i*ldo+c0 : i*ldo+c1 : i*ldo+c1]
		if relu {
			// Branch-free: ReLU inputs have random signs, and a branch on
			// them mispredicts half the time.
			for j, bj := range b {
				row[j] = max(row[j]+bj, 0)
			}
			continue
		}
		for j, bj := range b {
			row[j] += bj
		}
	}
}

// layerInput returns the input of layer l of coupling k for the first n rows:
// the conditioning half of state k for the first layer, else the previous
// layer's activations.
func (m *Model) layerInput(w *Workspace, k, l, n int) ([]float32, int) {
	if l == 0 {
		x1, _ := m.halves(k)
		return w.state(k, n)[x1:], m.Config.Dim
	}
	return w.activation(k, l-1, n), m.Config.Hidden
}

// mlp runs coupling k's MLP on the n rows of a (n x Dim/2, leading dimension
// lda) and writes beta*out + MLP(a) into out (leading dimension ldo), keeping
// the hidden activations in the workspace. It cuts each layer's columns as the
// forward pass does.
func (m *Model) mlp(w *Workspace, k, n int, a []float32, lda int, beta float32, out []float32, ldo int) {
	layers := m.P.Couplings[k].Layers
	L := len(layers) - 1
	for l, d := range layers {
		dst, ldd, b := out, ldo, beta
		if l < L {
			dst, ldd, b = w.activation(k, l, n), d.Out, 0
		}
		parts := columnParts(d.Out)
		for i := range parts {
			c0, c1 := columnCut(d.Out, parts, i)
			layer(d, n, c0, c1, a, lda, b, dst, ldd, l < L)
		}
		a, lda = dst, ldd
	}
}

// run pushes n samples of x (natural order) through the flow, leaving every
// state in the workspace, h and d log p(h)/dh in w.h and w.gh, and per-sample
// log-likelihoods in w.ll. It returns their sum. Each layer's product is cut
// by its output columns and the element-wise passes by rows (split.go); each
// row's arithmetic is the same however the parts are run.
func (m *Model) run(w *Workspace, x []float32, n int) float64 {
	w.sumS = 0
	for j, s := range m.P.Scale {
		w.expS[j] = float32(math.Exp(float64(s)))
		w.sumS += float64(s)
	}
	w.model, w.x, w.n = m, x, n
	parallel(forwardParts(n), w.permuteFn)
	for k, c := range m.P.Couplings {
		for l, d := range c.Layers {
			w.k, w.l = k, l
			parallel(columnParts(d.Out), w.layerFn)
		}
	}
	parallel(forwardParts(n), w.priorFn)
	w.model, w.x = nil, nil
	var total float64
	for _, ll := range w.ll[:n] {
		total += ll
	}
	return total
}

// permuteRows puts rows [lo, hi) of x into state 0, in partition order.
func (m *Model) permuteRows(w *Workspace, x []float32, lo, hi int) {
	D := m.Config.Dim
	z := w.state(0, hi)
	for i := lo; i < hi; i++ {
		xi, zi := x[i*D:(i+1)*D], z[i*D:(i+1)*D]
		for p, j := range m.perm {
			zi[p] = xi[j]
		}
	}
}

// layerPart runs part i of layer w.l of coupling w.k on all w.n rows: the
// columns columnCut gives it. Part i of a coupling's first layer also copies
// its share of the rows of state k into state k+1, which the last layer then
// adds the MLP's output to.
func (m *Model) layerPart(w *Workspace, i int) {
	k, l, n, D := w.k, w.l, w.n, m.Config.Dim
	layers := m.P.Couplings[k].Layers
	d, parts := layers[l], columnParts(layers[l].Out)
	if l == 0 {
		lo, hi := chunk(n, parts, i)
		copy(w.state(k+1, hi)[lo*D:], w.state(k, hi)[lo*D:])
	}
	a, lda := m.layerInput(w, k, l, n)
	c0, c1 := columnCut(d.Out, parts, i)
	if l == len(layers)-1 {
		_, x2 := m.halves(k)
		layer(d, n, c0, c1, a, lda, 1, w.state(k+1, n)[x2:], D, false)
		return
	}
	layer(d, n, c0, c1, a, lda, 0, w.activation(k, l, n), d.Out, true)
}

// priorRows maps rows [lo, hi) of the last state to h, and writes
// d log p(h)/dh and each row's log-likelihood.
func (m *Model) priorRows(w *Workspace, lo, hi int) {
	D := m.Config.Dim
	zC := w.state(m.Config.Couplings, hi)
	gaussian := m.Config.Prior == Gaussian
	for i := lo; i < hi; i++ {
		zi := zC[i*D : (i+1)*D]
		h, gi := w.h[i*D:(i+1)*D], w.gh[i*D:(i+1)*D]
		for p, j := range m.perm {
			h[j] = zi[p] * w.expS[j]
		}
		var ll float64
		if gaussian {
			for j, v := range h {
				ll -= 0.5 * float64(v) * float64(v)
				gi[j] = -v
			}
			ll -= 0.5 * float64(D) * math.Log(2*math.Pi)
		} else {
			for j, v := range h {
				lp, g := logistic(float64(v))
				ll += lp
				gi[j] = float32(g)
			}
		}
		w.ll[i] = ll + w.sumS
	}
}

// logistic returns the standard logistic log-density at h,
// -(softplus(h) + softplus(-h)), and its derivative -tanh(h/2), both computed
// without overflow for any h.
func logistic(h float64) (logp, dlogp float64) {
	a := math.Abs(h)
	e := math.Exp(-a)
	logp = -a - 2*math.Log1p(e)
	t := (1 - e) / (1 + e) // tanh(|h|/2)
	if h > 0 {
		t = -t
	}
	return logp, t
}

// LogLikelihood writes log p(x) in nats of each of the n samples in x (n x Dim,
// natural pixel order) into ll and returns their sum.
func (m *Model) LogLikelihood(w *Workspace, x []float32, n int, ll []float64) float64 {
	m.check(w, n, x)
	total := m.run(w, x, n)
	copy(ll, w.ll[:n])
	return total
}

// Forward maps the n samples of x to the latent h = f(x) (both n x Dim, natural
// pixel order).
func (m *Model) Forward(w *Workspace, x []float32, n int, h []float32) {
	m.check(w, n, x, h)
	m.run(w, x, n)
	copy(h, w.h[:n*m.Config.Dim])
}

// Inverse maps the n latents of h back to x = f⁻¹(h) (both n x Dim, natural
// pixel order).
func (m *Model) Inverse(w *Workspace, h []float32, n int, x []float32) {
	m.check(w, n, h, x)
	D, half := m.Config.Dim, m.Config.Dim/2
	z := w.state(0, n)
	for i := 0; i < n; i++ {
		hi, zi := h[i*D:(i+1)*D], z[i*D:(i+1)*D]
		for p, j := range m.perm {
			zi[p] = float32(float64(hi[j]) * math.Exp(-float64(m.P.Scale[j])))
		}
	}
	out := w.out[:n*half]
	for k := m.Config.Couplings - 1; k >= 0; k-- {
		x1, x2 := m.halves(k)
		m.mlp(w, k, n, z[x1:], D, 0, out, half)
		for i := 0; i < n; i++ {
			zi, oi := z[i*D+x2:i*D+x2+half], out[i*half:(i+1)*half]
			for j := range zi {
				zi[j] -= oi[j]
			}
		}
	}
	for i := 0; i < n; i++ {
		xi, zi := x[i*D:(i+1)*D], z[i*D:(i+1)*D]
		for p, j := range m.perm {
			xi[j] = zi[p]
		}
	}
}
