package flow

import "testing"

// Sampling at a temperature draws x = f⁻¹(T·h): at T = 1 it is Sample, at
// T < 1 every draw is the inverse of the scaled prior draw, and since the
// prior's log-density falls with |h| and the flow's log-determinant does
// not depend on x, every sample is more likely than its T = 1 twin.
func TestSampleAtTemperature(t *testing.T) {
	for _, prior := range []Prior{Logistic, Gaussian} {
		t.Run(string(prior), func(t *testing.T) {
			m := randomTinyModel(t, prior, 5)
			const n, seed = 6, 17
			D := m.Config.Dim
			ws := NewWorkspace(m.Config, n)
			at1 := make([]float32, n*D)
			plain := make([]float32, n*D)
			m.SampleAt(ws, n, seed, 1, at1)
			m.Sample(ws, n, seed, plain)
			for i := range plain {
				if at1[i] != plain[i] {
					t.Fatalf("SampleAt(T=1)[%d] = %v, Sample %v", i, at1[i], plain[i])
				}
			}

			const temp = 0.5
			cold := make([]float32, n*D)
			m.SampleAt(ws, n, seed, temp, cold)
			h := make([]float32, n*D)
			m.SamplePrior(h, seed)
			for i := range h {
				h[i] *= temp
			}
			want := make([]float32, n*D)
			m.Inverse(ws, h, n, want)
			for i := range want {
				if cold[i] != want[i] {
					t.Fatalf("SampleAt(T=%v)[%d] = %v, f⁻¹(T·h) %v", temp, i, cold[i], want[i])
				}
			}

			llCold, llWarm := make([]float64, n), make([]float64, n)
			m.LogLikelihood(ws, cold, n, llCold)
			m.LogLikelihood(ws, plain, n, llWarm)
			for i := range n {
				if !(llCold[i] > llWarm[i]) {
					t.Errorf("sample %d: log-likelihood %v at T=%v, not above %v at T=1", i, llCold[i], temp, llWarm[i])
				}
			}
		})
	}
}
