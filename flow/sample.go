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
	m.SampleAt(w, n, seed, 1, x)
}

// SampleAt draws n samples at a temperature: x = f⁻¹(T·h), h from the
// prior, so T scales the prior's scale (the logistic's s, the Gaussian's
// σ). Below 1 the draws keep nearer the prior's mode, which gives cleaner
// digits and less variety; 1 is Sample. T must be positive and finite.
func (m *Model) SampleAt(w *Workspace, n int, seed uint64, temperature float64, x []float32) {
	m.check(w, n, x)
	h := w.h[:n*m.Config.Dim]
	m.SamplePrior(h, seed)
	if temperature != 1 {
		t := float32(temperature)
		for i := range h {
			h[i] *= t
		}
	}
	m.Inverse(w, h, n, x)
}
