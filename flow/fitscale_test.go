package flow

import (
	"math"
	"strings"
	"testing"
)

// TestFitScaleMaximisesEachDimension checks the fitted log-scales against the
// model's own log-likelihood: moving any one of them either way lowers the
// samples' summed log-likelihood, and the fit beats the zero start.
func TestFitScaleMaximisesEachDimension(t *testing.T) {
	for _, prior := range []Prior{Logistic, Gaussian} {
		t.Run(string(prior), func(t *testing.T) {
			m := randomTinyModel(t, prior, 5)
			const n = 11 // more than the workspace: FitScale goes through it in parts
			x := randomBatch(n, m.Config.Dim, 6)
			for i := range x {
				x[i] = x[i] * x[i] * 0.1 // a small spread: the optimum is far from 0
			}
			ws := NewWorkspace(m.Config, 4)
			ll := func() float64 {
				var sum float64
				for lo := 0; lo < n; lo += ws.Max {
					c := min(ws.Max, n-lo)
					sum += m.LogLikelihood(ws, x[lo*m.Config.Dim:], c, nil)
				}
				return sum
			}
			clear(m.P.Scale)
			zero := ll()
			if err := m.FitScale(ws, x, n, make([]float32, n*m.Config.Dim)); err != nil {
				t.Fatal(err)
			}
			best := ll()
			if !(best > zero+1) {
				t.Fatalf("fitted log-likelihood %v, zero scales %v: the fit should gain", best, zero)
			}
			for j := range m.P.Scale {
				s := m.P.Scale[j]
				if s == 0 || math.Abs(float64(s)) >= ScaleLimit {
					t.Errorf("dimension %d: fitted s = %v", j, s)
				}
				for _, d := range []float32{-0.01, 0.01} {
					m.P.Scale[j] = s + d
					if got := ll(); got >= best {
						t.Errorf("dimension %d: s %v gives %v, s+%v gives %v (not a maximum)", j, s, best, d, got)
					}
				}
				m.P.Scale[j] = s
			}
		})
	}
}

// TestFitScaleBoundsAndRefuses covers the edges: a dimension every sample
// leaves at zero gets the bound, and a non-finite input is refused with the
// scales unchanged.
func TestFitScaleBoundsAndRefuses(t *testing.T) {
	m := randomTinyModel(t, Logistic, 7)
	// Zero every coupling's output layer: the flow is the identity before
	// the scaling, so a zero input dimension stays zero.
	m.ZeroOutputs()
	const n = 3
	D := m.Config.Dim
	x := randomBatch(n, D, 8)
	for i := 0; i < n; i++ {
		x[i*D] = 0
	}
	ws := NewWorkspace(m.Config, n)
	z := make([]float32, n*D)
	if err := m.FitScale(ws, x, n, z); err != nil {
		t.Fatal(err)
	}
	if m.P.Scale[0] != ScaleLimit {
		t.Errorf("a dimension at zero in every sample: s = %v, want the bound %v", m.P.Scale[0], ScaleLimit)
	}
	before := append([]float32(nil), m.P.Scale...)
	x[3] = float32(math.NaN())
	err := m.FitScale(ws, x, n, z)
	if err == nil || !strings.Contains(err.Error(), "non-finite") {
		t.Fatalf("NaN input: error %v, want one naming the non-finite output", err)
	}
	for j := range before {
		if m.P.Scale[j] != before[j] {
			t.Fatalf("a refused fit changed s[%d] from %v to %v", j, before[j], m.P.Scale[j])
		}
	}
	if err := m.FitScale(ws, x, 0, z); err == nil {
		t.Error("no samples: no error")
	}
}
