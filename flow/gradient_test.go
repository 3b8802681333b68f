package flow

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// tinyConfig is small enough for float64 finite differences over every layer.
func tinyConfig(p Prior) Config {
	return Config{Dim: 8, Couplings: 4, Hidden: 6, HiddenLayers: 2, Prior: p}
}

// refLogLikelihood is an independent float64 implementation of NICE that reads
// the documented flat layout directly and works in natural pixel order.
func refLogLikelihood(c Config, params []float64, x []float64, n int) float64 {
	D, half := c.Dim, c.Dim/2
	off := 0
	take := func(k int) []float64 { s := params[off : off+k]; off += k; return s }
	type dense struct {
		in, out int
		w, b    []float64
	}
	couplings := make([][]dense, c.Couplings)
	for k := range couplings {
		in := half
		for l := 0; l <= c.HiddenLayers; l++ {
			out := c.Hidden
			if l == c.HiddenLayers {
				out = half
			}
			couplings[k] = append(couplings[k], dense{in, out, take(in * out), take(out)})
			in = out
		}
	}
	s := take(D)
	var total float64
	for i := 0; i < n; i++ {
		z := append([]float64(nil), x[i*D:(i+1)*D]...)
		for k, layers := range couplings {
			// Coupling k conditions on the even pixels when k is even.
			var idx1, idx2 []int
			for j := 0; j < D; j++ {
				if (j%2 == 0) == (k%2 == 0) {
					idx1 = append(idx1, j)
				} else {
					idx2 = append(idx2, j)
				}
			}
			a := make([]float64, half)
			for q, j := range idx1 {
				a[q] = z[j]
			}
			for l, d := range layers {
				o := make([]float64, d.out)
				for q := range o {
					v := d.b[q]
					for r := range a {
						v += a[r] * d.w[r*d.out+q]
					}
					if l < len(layers)-1 && v < 0 {
						v = 0
					}
					o[q] = v
				}
				a = o
			}
			for q, j := range idx2 {
				z[j] += a[q]
			}
		}
		for j := range z {
			h := z[j] * math.Exp(s[j])
			if c.Prior == Gaussian {
				total += -0.5*h*h - 0.5*math.Log(2*math.Pi)
			} else {
				total += -math.Log1p(math.Exp(h)) - math.Log1p(math.Exp(-h))
			}
			total += s[j]
		}
	}
	return total
}

func randomTinyModel(t *testing.T, p Prior, seed uint64) *Model {
	t.Helper()
	m, err := New(tinyConfig(p))
	if err != nil {
		t.Fatal(err)
	}
	m.Init(seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for j := range m.P.Scale {
		m.P.Scale[j] = float32(rng.Float64() - 0.5)
	}
	return m
}

func randomBatch(n, d int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 2))
	x := make([]float32, n*d)
	for i := range x {
		x[i] = float32(rng.Float64())
	}
	return x
}

func TestGradientMatchesFiniteDifferences(t *testing.T) {
	for _, prior := range []Prior{Logistic, Gaussian} {
		t.Run(string(prior), func(t *testing.T) {
			m := randomTinyModel(t, prior, 7)
			const n = 5
			x := randomBatch(n, m.Config.Dim, 3)
			ws := NewWorkspace(m.Config, n)
			grad := make([]float32, m.NumParams())
			got := m.Gradient(ws, x, n, grad)

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

			// Every parameter group: each layer's W and B of every coupling,
			// and the scale. Check every entry: the model is tiny.
			gv := m.Layout.Views(grad)
			type group struct {
				name string
				g    []float32
			}
			var groups []group
			for k, c := range gv.Couplings {
				for l, d := range c.Layers {
					groups = append(groups, group{fmt.Sprintf("coupling %d layer %d W", k, l), d.W})
					groups = append(groups, group{fmt.Sprintf("coupling %d layer %d B", k, l), d.B})
				}
			}
			groups = append(groups, group{"scale", gv.Scale})
			base := &grad[0]
			const eps = 1e-6
			checked := 0
			for _, gr := range groups {
				for i := range gr.g {
					// Position of this entry in the flat buffer.
					pos := int((uintptrOf(&gr.g[i]) - uintptrOf(base)) / 4)
					orig := p64[pos]
					p64[pos] = orig + eps
					fp := refLogLikelihood(m.Config, p64, x64, n)
					p64[pos] = orig - eps
					fm := refLogLikelihood(m.Config, p64, x64, n)
					p64[pos] = orig
					fd := (fp - fm) / (2 * eps)
					an := float64(gr.g[i])
					if math.Abs(an-fd) > 1e-3*(1+math.Abs(fd)) {
						t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g", gr.name, i, an, fd)
					}
					checked++
				}
			}
			if checked != m.NumParams() {
				t.Fatalf("checked %d of %d parameters", checked, m.NumParams())
			}
		})
	}
}

func TestGradientIsOverwrittenAndBatchSizesAdd(t *testing.T) {
	m := randomTinyModel(t, Logistic, 11)
	const n = 6
	x := randomBatch(n, m.Config.Dim, 5)
	ws := NewWorkspace(m.Config, n)
	full := make([]float32, m.NumParams())
	m.Gradient(ws, x, n, full)
	// The gradient of a sum over a batch is the sum of the gradients over a
	// split of it: what data parallelism relies on.
	a := make([]float32, m.NumParams())
	b := make([]float32, m.NumParams())
	for i := range a {
		a[i] = 1e9 // must be overwritten
	}
	D := m.Config.Dim
	m.Gradient(ws, x[:2*D], 2, a)
	m.Gradient(ws, x[2*D:], n-2, b)
	for i := range full {
		s := a[i] + b[i]
		if d := math.Abs(float64(s - full[i])); d > 1e-4*(1+math.Abs(float64(full[i]))) {
			t.Fatalf("param %d: split sum %v, whole batch %v", i, s, full[i])
		}
	}
}
