package flow

import (
	"math"
	"testing"
)

// The input gradient equals central finite differences of the independent
// float64 reference, for every pixel of every sample, with either prior.
func TestInputGradientMatchesFiniteDifferences(t *testing.T) {
	for _, prior := range []Prior{Logistic, Gaussian} {
		t.Run(string(prior), func(t *testing.T) {
			m := randomTinyModel(t, prior, 13)
			const n = 4
			D := m.Config.Dim
			x := randomBatch(n, D, 9)
			ws := NewWorkspace(m.Config, n)
			gx := make([]float32, n*D)
			for i := range gx {
				gx[i] = 1e9 // must be overwritten
			}
			ll := make([]float64, n)
			got := m.InputGradient(ws, x, n, gx, ll)

			p64 := make([]float64, len(m.Params))
			for i, v := range m.Params {
				p64[i] = float64(v)
			}
			x64 := make([]float64, len(x))
			for i, v := range x {
				x64[i] = float64(v)
			}
			want := refLogLikelihood(m.Config, p64, x64, n)
			if math.Abs(got-want) > 1e-4*math.Abs(want) {
				t.Fatalf("log-likelihood %v, float64 reference %v", got, want)
			}
			var sum float64
			for _, v := range ll {
				sum += v
			}
			if math.Abs(sum-got) > 1e-9*math.Abs(got) {
				t.Fatalf("per-sample log-likelihoods sum to %v, the total is %v", sum, got)
			}
			const eps = 1e-6
			for i := range x64 {
				orig := x64[i]
				// The reference sums over samples; only sample i/D depends
				// on this pixel.
				x64[i] = orig + eps
				fp := refLogLikelihood(m.Config, p64, x64, n)
				x64[i] = orig - eps
				fm := refLogLikelihood(m.Config, p64, x64, n)
				x64[i] = orig
				fd := (fp - fm) / (2 * eps)
				if an := float64(gx[i]); math.Abs(an-fd) > 1e-3*(1+math.Abs(fd)) {
					t.Errorf("sample %d pixel %d: analytic %.6g, finite difference %.6g", i/D, i%D, an, fd)
				}
			}
		})
	}
}

// The input gradient of a sample does not depend on the rest of its batch.
func TestInputGradientIsPerSample(t *testing.T) {
	m := randomTinyModel(t, Logistic, 17)
	const n = 5
	D := m.Config.Dim
	x := randomBatch(n, D, 4)
	ws := NewWorkspace(m.Config, n)
	all := make([]float32, n*D)
	m.InputGradient(ws, x, n, all, nil)
	one := make([]float32, D)
	for i := 0; i < n; i++ {
		m.InputGradient(ws, x[i*D:(i+1)*D], 1, one, nil)
		for j := range one {
			if d := math.Abs(float64(one[j] - all[i*D+j])); d > 1e-5*(1+math.Abs(float64(one[j]))) {
				t.Fatalf("sample %d pixel %d: alone %v, in the batch %v", i, j, one[j], all[i*D+j])
			}
		}
	}
}
