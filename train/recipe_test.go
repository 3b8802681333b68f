package train

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/nice-flow/nice/flow"
)

func TestLRFactor(t *testing.T) {
	c := tinyConfig()
	c.WarmupSteps, c.DecayEpochs, c.FinalLR = 4, 2, 0.1
	const spe = 10 // the decay ends at step 20
	for _, tc := range []struct {
		step int64
		want float64
	}{
		{0, 0.25 * 1}, // warm-up's first step
		{3, 1 * (0.1 + 0.9*0.5*(1+math.Cos(math.Pi*3/20)))}, // last warm-up step, decay under way
		{10, 0.1 + 0.9*0.5}, // half way down the cosine
		{20, 0.1},           // the end of the decay
		{1000, 0.1},         // held after it
	} {
		if got := c.LRFactor(tc.step, spe); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("step %d: factor %v, want %v", tc.step, got, tc.want)
		}
	}
	prev := math.Inf(1)
	for s := int64(c.WarmupSteps); s < 30; s++ {
		f := c.LRFactor(s, spe)
		if f > prev {
			t.Fatalf("step %d: the factor rose from %v to %v after the warm-up", s, prev, f)
		}
		prev = f
	}
	if f := tinyConfig().LRFactor(12345, spe); f != 1 {
		t.Errorf("no schedule: factor %v, want 1", f)
	}
	c.DecayShape = DecayLinear
	for _, tc := range []struct {
		step int64
		want float64
	}{
		{0, 0.25 * 1},
		{3, 1 * (0.1 + 0.9*(1-3.0/20))},
		{10, 0.1 + 0.9*0.5},
		{15, 0.1 + 0.9*0.25},
		{20, 0.1},
		{1000, 0.1},
	} {
		if got := c.LRFactor(tc.step, spe); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("linear, step %d: factor %v, want %v", tc.step, got, tc.want)
		}
	}
}

// TestDataInitRaisesTheFirstBatchsLikelihood checks the data initialisation
// where it matters: the first batch it was fitted to scores higher than with
// the paper's zero start, and the state of step 0 is the same whoever builds
// it (InitialState for the coordinator, New for a worker or train).
func TestDataInitRaisesTheFirstBatchsLikelihood(t *testing.T) {
	d := syntheticData()
	paper := tinyConfig()
	fitted := paper
	fitted.Init = InitData
	firstLL := func(c Config) float64 {
		tr := mustTrainer(t, c, d)
		return tr.ComputeGradient(tr.BatchIndices(Position{}), 0)
	}
	zero, fit := firstLL(paper), firstLL(fitted)
	if !(fit > zero) {
		t.Fatalf("first batch: log-likelihood %v with the data initialisation, %v with zero scales", fit, zero)
	}
	st, err := InitialState(fitted, d)
	if err != nil {
		t.Fatal(err)
	}
	tr := mustTrainer(t, fitted, d)
	if !sameBits(st.Params, tr.Model.Params) {
		t.Fatal("InitialState and New start from different parameters")
	}
	if sameBits(st.Params, mustTrainer(t, paper, d).Model.Params) {
		t.Fatal("the data initialisation changed nothing")
	}
	// Without the data fit, InitialState needs no data and still agrees.
	identity := paper
	identity.IdentityStart = true
	st, err = InitialState(identity, Data{})
	if err != nil {
		t.Fatal(err)
	}
	if !sameBits(st.Params, mustTrainer(t, identity, d).Model.Params) {
		t.Fatal("InitialState and New start from different parameters with --identity-start alone")
	}
	if _, err := InitialState(fitted, Data{}); err == nil || !strings.Contains(err.Error(), "no training data") {
		t.Fatalf("data initialisation without data: error %v", err)
	}
}

func TestValidateNamesRecipeSettings(t *testing.T) {
	c := tinyConfig()
	c.Init, c.InitSamples, c.WarmupSteps, c.DecayEpochs, c.FinalLR, c.DecayShape = "ones", -1, -2, -3, 1.5, "step"
	c.Adam.ScaleLR, c.Adam.WeightDecay = -1, -1
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`init "ones"`, "init samples -1", "warm-up -2", "decay over -3", "fraction 1.5", "scale learning rate -1", "weight decay -1", `decay shape "step"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// TestIdentityStart checks that the couplings start as the identity (their
// output layers zero, the hidden layers random): the flow is the fitted
// scaling alone.
func TestIdentityStart(t *testing.T) {
	d := syntheticData()
	c := tinyConfig()
	c.Init, c.IdentityStart = InitData, true
	tr := mustTrainer(t, c, d)
	for k, cp := range tr.Model.P.Couplings {
		last := len(cp.Layers) - 1
		for l, layer := range cp.Layers {
			zero := !slices.ContainsFunc(layer.W, func(v float32) bool { return v != 0 })
			if zero != (l == last) {
				t.Errorf("coupling %d layer %d: all weights zero %v, want %v", k, l, zero, l == last)
			}
		}
	}
	const n = 4
	D := c.Model.Dim
	x, h := make([]float32, n*D), make([]float32, n*D)
	d.Train.FillBatch(x, []int32{0, 1, 2, 3}, 1, 0)
	tr.Model.Forward(flow.NewWorkspace(c.Model, n), x, n, h)
	for i := range h {
		s := tr.Model.P.Scale[i%D]
		if want := x[i] * float32(math.Exp(float64(s))); h[i] != want {
			t.Fatalf("h[%d] = %v, want x exp(s) = %v", i, h[i], want)
		}
	}
}
