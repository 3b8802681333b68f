package flow

import (
	"errors"
	"math"
	"testing"
)

func TestParamCountOfThePaperModel(t *testing.T) {
	l := NewLayout(DefaultConfig())
	// 4 couplings of 392->1000, 4 x 1000->1000, 1000->392 (weights and biases),
	// plus 784 log-scales.
	per := 392*1000 + 1000 + 4*(1000*1000+1000) + 1000*392 + 392
	if want := 4*per + 784; l.Size() != want {
		t.Fatalf("layout holds %d parameters, want %d", l.Size(), want)
	}
}

func TestZeroedFlowIsThePrior(t *testing.T) {
	// With every coupling's output layer and the scale zeroed the flow is the
	// identity, so log p(x) is the logistic log-density of x itself.
	m, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.Init(1)
	m.ZeroOutputs()
	clear(m.P.Scale)
	const n = 3
	x := randomBatch(n, 784, 9)
	for i := range x {
		x[i] = 8*x[i] - 4 // exercise both tails
	}
	ws := NewWorkspace(m.Config, n)
	ll := make([]float64, n)
	m.LogLikelihood(ws, x, n, ll)
	for i := 0; i < n; i++ {
		var want float64
		for _, v := range x[i*784 : (i+1)*784] {
			e := math.Exp(float64(v))
			want += math.Log(e / ((1 + e) * (1 + e))) // logistic density e^x/(1+e^x)^2
		}
		if math.Abs(ll[i]-want) > 1e-9*math.Abs(want)+1e-6 {
			t.Errorf("sample %d: log p(x) %v, logistic density %v", i, ll[i], want)
		}
	}
}

func TestInverseUndoesForwardTiny(t *testing.T) {
	for _, prior := range []Prior{Logistic, Gaussian} {
		m := randomTinyModel(t, prior, 21)
		const n = 4
		x := randomBatch(n, m.Config.Dim, 8)
		ws := NewWorkspace(m.Config, n)
		h := make([]float32, len(x))
		back := make([]float32, len(x))
		m.Forward(ws, x, n, h)
		m.Inverse(ws, h, n, back)
		for i := range x {
			if math.Abs(float64(back[i]-x[i])) > 1e-5 {
				t.Fatalf("%s: x[%d] = %v, inverse(forward(x)) = %v", prior, i, x[i], back[i])
			}
		}
	}
}

// refAdam is Adam written out in float64 from the paper's algorithm, ascending,
// parameter i at learning rate lr(i).
// Parameters before tail decay by rate·LR·WeightDecay first, as AdamW.
func refAdam(c AdamConfig, lr func(i int) float64, rate float64, tail int, p, m, v []float64, g []float64, t int) {
	var norm float64
	for _, x := range g {
		norm += x * x
	}
	norm = math.Sqrt(norm)
	scale := 1.0
	if c.ClipNorm > 0 && norm > c.ClipNorm {
		scale = c.ClipNorm / norm
	}
	for i := range p {
		gi := g[i] * scale
		m[i] = c.Beta1*m[i] + (1-c.Beta1)*gi
		v[i] = c.Beta2*v[i] + (1-c.Beta2)*gi*gi
		mh := m[i] / (1 - math.Pow(c.Beta1, float64(t)))
		vh := v[i] / (1 - math.Pow(c.Beta2, float64(t)))
		if i < tail {
			p[i] -= rate * c.LR * c.WeightDecay * p[i]
		}
		p[i] += lr(i) * mh / (math.Sqrt(vh) + c.Eps)
	}
}

func TestAdamMatchesReference(t *testing.T) {
	const n, batch = 1000, 4
	for _, tc := range []struct {
		name     string
		clip     float64
		scaleLR  float64 // for the parameters from tail on
		decay    float64 // weight decay of the parameters before tail
		rate     float64 // the schedule's factor
		tailFrom int
	}{
		{name: "plain", rate: 1, tailFrom: n},
		{name: "clipped", clip: 0.5, rate: 1, tailFrom: n},
		// The tail starts inside one of the update's chunks of n/64.
		{name: "scale group", scaleLR: 7e-3, rate: 1, tailFrom: n - 37},
		{name: "scheduled", clip: 0.5, scaleLR: 2e-2, rate: 0.3, tailFrom: n - 784/4},
		{name: "scale group at the default", rate: 0.5, tailFrom: 600},
		{name: "weight decay", decay: 30, rate: 1, tailFrom: n - 37},
		{name: "scheduled weight decay", decay: 50, scaleLR: 2e-2, rate: 0.3, tailFrom: n - 784/4},
	} {
		c := DefaultAdam()
		c.ClipNorm, c.ScaleLR, c.WeightDecay = tc.clip, tc.scaleLR, tc.decay
		a := NewAdam(c, n)
		a.Rate, a.TailFrom = tc.rate, tc.tailFrom
		lr := func(i int) float64 {
			if i >= tc.tailFrom && c.ScaleLR > 0 {
				return tc.rate * c.ScaleLR
			}
			return tc.rate * c.LR
		}
		// Parameters away from zero, so a decay shows.
		p := randomBatch(n, 1, 99)
		rp, rm, rv := make([]float64, n), make([]float64, n), make([]float64, n)
		for i := range p {
			rp[i] = float64(p[i])
		}
		for step := 1; step <= 5; step++ {
			gs := randomBatch(n, 1, uint64(step))
			g64 := make([]float64, n)
			for i := range gs {
				gs[i] -= 0.5
				g64[i] = float64(gs[i]) / batch
			}
			if _, err := a.Update(p, gs, batch); err != nil {
				t.Fatal(err)
			}
			refAdam(c, lr, tc.rate, tc.tailFrom, rp, rm, rv, g64, step)
		}
		for i := range p {
			if math.Abs(float64(p[i])-rp[i]) > 1e-6*max(1, lr(i)/c.LR) {
				t.Fatalf("%s: param %d = %v, reference %v", tc.name, i, p[i], rp[i])
			}
		}
	}
}

func TestAdamRefusesNonFiniteGradients(t *testing.T) {
	a := NewAdam(DefaultAdam(), 10)
	p := make([]float32, 10)
	g := make([]float32, 10)
	g[3] = float32(math.NaN())
	if _, err := a.Update(p, g, 1); !errors.Is(err, ErrNonFinite) {
		t.Fatalf("NaN gradient: err %v, want ErrNonFinite", err)
	}
	g[3] = float32(math.Inf(1))
	if _, err := a.Update(p, g, 1); !errors.Is(err, ErrNonFinite) {
		t.Fatalf("Inf gradient: err %v, want ErrNonFinite", err)
	}
	for i := range p {
		if p[i] != 0 || a.M[i] != 0 || a.V[i] != 0 {
			t.Fatal("a refused update changed the state")
		}
	}
	if a.Step != 0 {
		t.Fatalf("step %d after refused updates", a.Step)
	}
}

func TestSameSeedSameTrajectory(t *testing.T) {
	run := func() []float32 {
		m := randomTinyModel(t, Logistic, 5)
		a := NewAdam(DefaultAdam(), m.NumParams())
		ws := NewWorkspace(m.Config, 8)
		g := make([]float32, m.NumParams())
		for step := 0; step < 5; step++ {
			x := randomBatch(8, m.Config.Dim, uint64(100+step))
			m.Gradient(ws, x, 8, g)
			if _, err := a.Update(m.Params, g, 8); err != nil {
				t.Fatal(err)
			}
		}
		return m.Params
	}
	a, b := run(), run()
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("param %d differs between identical runs: %v vs %v", i, a[i], b[i])
		}
	}
}

func TestConfigValidation(t *testing.T) {
	bad := []Config{
		{Dim: 7, Couplings: 4, Hidden: 10, HiddenLayers: 1, Prior: Logistic},
		{Dim: 8, Couplings: 0, Hidden: 10, HiddenLayers: 1, Prior: Logistic},
		{Dim: 8, Couplings: 4, Hidden: 10, HiddenLayers: 1, Prior: "cauchy"},
	}
	for _, c := range bad {
		if _, err := New(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}
