package flow

import "math"

// mlp runs coupling k's MLP on the n rows of a (n x Dim/2, leading dimension
// lda), rows lo to lo+n of the batch, and writes beta*out + MLP(a) into out
// (leading dimension ldo), keeping the hidden activations in the workspace for
// the backward pass.
func (m *Model) mlp(w *Workspace, k, lo, n int, a []float32, lda int, beta float32, out []float32, ldo int) {
	layers := m.P.Couplings[k].Layers
	L := len(layers) - 1
	for l, d := range layers {
		if l == L {
			gemm(false, false, n, d.Out, d.In, 1, a, lda, d.W, d.Out, beta, out, ldo)
			for i := 0; i < n; i++ {
				row := out[i*ldo : i*ldo+d.Out]
				for j, b := range d.B {
					row[j] += b
				}
			}
			return
		}
		act := w.activation(k, l, lo+n)[lo*d.Out:]
		gemm(false, false, n, d.Out, d.In, 1, a, lda, d.W, d.Out, 0, act, d.Out)
		biasReLU(act, d.B)
		a, lda = act, d.Out
	}
}

// biasReLU sets each row r of x (rows of len(b)) to max(0, r + b).
func biasReLU(x, b []float32) {
	n := len(b)
	for i := 0; i+n <= len(x); i += n {
		row := x[i : i+n : i+n]
		for j, bj := range b {
			// Branch-free: ReLU inputs have random signs, and a branch on
			// them mispredicts half the time.
			row[j] = max(row[j]+bj, 0)
		}
	}
}

// run pushes n samples of x (natural order) through the flow, leaving every
// state in the workspace, h and d log p(h)/dh in w.h and w.gh, and per-sample
// log-likelihoods in w.ll. It returns their sum. The rows are split among the
// workspace's threads; each row's arithmetic is the same however they are split.
func (m *Model) run(w *Workspace, x []float32, n int) float64 {
	w.sumS = 0
	for j, s := range m.P.Scale {
		w.expS[j] = float32(math.Exp(float64(s)))
		w.sumS += float64(s)
	}
	w.model, w.x = m, x
	w.split(n, w.forwardFn)
	w.model, w.x = nil, nil
	var total float64
	for _, ll := range w.ll[:n] {
		total += ll
	}
	return total
}

// forwardRows is run on rows [lo, hi) of the batch.
func (m *Model) forwardRows(w *Workspace, x []float32, lo, hi int) {
	D, n := m.Config.Dim, hi-lo
	z := w.state(0, hi)[lo*D:]
	for i := 0; i < n; i++ {
		xi, zi := x[(lo+i)*D:(lo+i+1)*D], z[i*D:(i+1)*D]
		for p, j := range m.perm {
			zi[p] = xi[j]
		}
	}
	for k := range m.P.Couplings {
		in, out := w.state(k, hi)[lo*D:], w.state(k+1, hi)[lo*D:]
		copy(out, in)
		x1, x2 := m.halves(k)
		m.mlp(w, k, lo, n, in[x1:], D, 1, out[x2:], D)
	}
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
		m.mlp(w, k, 0, n, z[x1:], D, 0, out, half)
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
