package flow

import (
	"math"
	"math/rand/v2"
)

// SamplePrior fills h with independent draws from the model's prior, from a
// generator seeded with seed: logistic h = ln u - ln(1-u), or standard normal.
func (m *Model) SamplePrior(h []float32, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x73616d70)) // "samp"
	for i := range h {
		if m.Config.Prior == Gaussian {
			h[i] = float32(rng.NormFloat64())
			continue
		}
		u := rng.Float64()
		for u == 0 {
			u = rng.Float64()
		}
		h[i] = float32(math.Log(u) - math.Log1p(-u))
	}
}

// Sample draws n samples x = f⁻¹(h), h from the prior, into x (n x Dim,
// natural pixel order).
func (m *Model) Sample(w *Workspace, n int, seed uint64, x []float32) {
	m.check(w, n, x)
	h := w.h[:n*m.Config.Dim]
	m.SamplePrior(h, seed)
	m.Inverse(w, h, n, x)
}
