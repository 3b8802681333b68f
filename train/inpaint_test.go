package train

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
)

func TestMasks(t *testing.T) {
	const w = 6
	count := func(m []bool) int {
		k := 0
		for _, v := range m {
			if v {
				k++
			}
		}
		return k
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		mask    Mask
		missing int
		at      []int // pixels that must be missing
		kept    []int // pixels that must be observed
	}{
		{Mask{Kind: MaskLeft}, 18, []int{0, 2, 32}, []int{3, 35}},
		{Mask{Kind: MaskRight}, 18, []int{3, 35}, []int{0, 32}},
		{Mask{Kind: MaskTop}, 18, []int{0, 17}, []int{18, 35}},
		{Mask{Kind: MaskBottom}, 18, []int{18, 35}, []int{0, 17}},
		{Mask{Kind: MaskSquare, Side: 2}, 4, []int{14, 15, 20, 21}, []int{0, 13, 22}},
	} {
		m, err := tc.mask.Missing(2, w, rng)
		if err != nil {
			t.Fatalf("%s: %v", tc.mask.Kind, err)
		}
		if got := count(m[:w*w]); got != tc.missing || count(m[w*w:]) != tc.missing {
			t.Fatalf("%s: %d missing, want %d", tc.mask.Kind, got, tc.missing)
		}
		for _, i := range tc.at {
			if !m[i] {
				t.Errorf("%s: pixel %d observed, should be missing", tc.mask.Kind, i)
			}
		}
		for _, i := range tc.kept {
			if m[i] {
				t.Errorf("%s: pixel %d missing, should be observed", tc.mask.Kind, i)
			}
		}
	}
	m, err := Mask{Kind: MaskRandom, Fraction: 0.25}.Missing(100, 28, rng)
	if err != nil {
		t.Fatal(err)
	}
	if f := float64(count(m)) / float64(len(m)); f < 0.24 || f > 0.26 {
		t.Fatalf("random mask of fraction 0.25: %.3f missing", f)
	}
	if slices.Equal(m[:784], m[784:2*784]) {
		t.Fatal("random mask: two images have the same missing pixels")
	}
	for _, bad := range []Mask{{Kind: "diagonal"}, {Kind: MaskRandom}, {Kind: MaskRandom, Fraction: 1}, {Kind: MaskSquare}, {Kind: MaskSquare, Side: 29}} {
		if _, err := bad.Missing(1, 28, rng); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// inpaintModel is a tiny model trained for 10 steps, and the first n
// images of its scored set.
func inpaintModel(t *testing.T, n int) (*flow.Model, []float32) {
	t.Helper()
	c, d := tinyConfig(), syntheticData()
	tr := mustTrainer(t, c, d)
	steps(t, tr, 10)
	x := make([]float32, n*tr.Model.Config.Dim)
	idx := make([]int32, n)
	for i := range idx {
		idx[i] = int32(i)
	}
	d.Eval.FillBatch(x, idx, c.EvalSeed, 0)
	return tr.Model, x
}

// Inpainting a briefly trained tiny model raises the log-likelihood of the
// images: the result's beats the masked start's, the trace rises overall,
// and the observed pixels are untouched while the filled ones stay in
// [0, 1].
func TestInpaintRaisesLogLikelihood(t *testing.T) {
	t.Run("gradient", func(t *testing.T) { testInpaintRaises(t, InpaintConfig{Steps: 30, LR: 1e-2, Seed: 5}) })
	t.Run("normalised", func(t *testing.T) { testInpaintRaises(t, InpaintConfig{Steps: 30, LR: 1e-2, Seed: 5, Normalise: true}) })
}

func testInpaintRaises(t *testing.T, c InpaintConfig) {
	const n = 6
	m, x := inpaintModel(t, n)
	orig := slices.Clone(x)
	missing, err := Mask{Kind: MaskBottom}.Missing(n, mnist.Cols, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := flow.NewWorkspace(m.Config, 4) // two batches, the second partial
	res, err := Inpaint(m, ws, x, missing, n, c)
	if err != nil {
		t.Fatal(err)
	}
	start, final := Mean(res.Start), Mean(res.Final)
	t.Logf("mean log-likelihood: masked start %.2f, after 30 steps %.2f; trace %.1f", start, final, res.Trace)
	if !(final > start) {
		t.Fatalf("inpainting lowered the log-likelihood: %.3f -> %.3f", start, final)
	}
	for i := range res.Start {
		if !(res.Final[i] > res.Start[i]) {
			t.Errorf("image %d: %.3f -> %.3f", i, res.Start[i], res.Final[i])
		}
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Abs(b) }
	if len(res.Trace) != 31 || !close(res.Trace[0], start) || !close(res.Trace[30], final) {
		t.Fatalf("trace of %d entries from %v to %v; start %v final %v", len(res.Trace), res.Trace[0], res.Trace[len(res.Trace)-1], start, final)
	}
	for s := 10; s <= 30; s += 10 {
		if !(res.Trace[s] > res.Trace[s-10]) {
			t.Errorf("mean log-likelihood did not rise from step %d (%.3f) to %d (%.3f)", s-10, res.Trace[s-10], s, res.Trace[s])
		}
	}
	for i := range x {
		if !missing[i] && x[i] != orig[i] {
			t.Fatalf("observed pixel %d changed: %v -> %v", i, orig[i], x[i])
		}
		if x[i] < 0 || x[i] > 1 {
			t.Fatalf("pixel %d = %v, outside [0, 1]", i, x[i])
		}
	}
}

// A first step far too large for the model (the gradient of a trained
// model's background is steep) is undone and halved until steps rise again:
// every image ends above its start, the mean never falls from one step to
// the next, and the step sizes end far below the first. With a fixed step
// the pixels would jump across their optimum and the likelihood fall.
func TestInpaintAdaptsAStepTooLarge(t *testing.T) {
	const n = 5
	m, x := inpaintModel(t, n)
	missing, err := Mask{Kind: MaskRandom, Fraction: 0.5}.Missing(n, mnist.Cols, rand.New(rand.NewPCG(3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	const first = 1e4
	ws := flow.NewWorkspace(m.Config, n)
	res, err := Inpaint(m, ws, x, missing, n, InpaintConfig{Steps: 40, LR: first, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace %.1f; step sizes %.3g", res.Trace, res.StepSize)
	for i := range res.Start {
		if !(res.Final[i] > res.Start[i]) {
			t.Errorf("image %d: %.3f -> %.3f", i, res.Start[i], res.Final[i])
		}
		if !(res.StepSize[i] < first/100) {
			t.Errorf("image %d: step size %.3g at the end, from %.3g", i, res.StepSize[i], first)
		}
	}
	for s := 1; s < len(res.Trace); s++ {
		if res.Trace[s] < res.Trace[s-1] {
			t.Errorf("mean log-likelihood fell at step %d: %.3f -> %.3f", s, res.Trace[s-1], res.Trace[s])
		}
	}
	// The result is what the model says of x as it was left.
	ll := make([]float64, n)
	m.LogLikelihood(ws, x, n, ll)
	for i := range ll {
		if ll[i] != res.Final[i] {
			t.Errorf("image %d: reported %.6f, x scores %.6f", i, res.Final[i], ll[i])
		}
	}
}

// A normalised step moves every missing pixel by the step size, whatever
// the size of its gradient (the first step's mean square is the gradient's
// own square), where a plain step moves each by its gradient: the pixels a
// trained model is sure of no longer set the pace for the rest.
func TestInpaintNormalisedMovesEveryPixelAlike(t *testing.T) {
	const n, lr = 3, 1e-4
	m, x := inpaintModel(t, n)
	missing, err := Mask{Kind: MaskTop}.Missing(n, mnist.Cols, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := flow.NewWorkspace(m.Config, n)
	start := slices.Clone(x)
	if _, err := Inpaint(m, ws, start, missing, n, InpaintConfig{LR: lr, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	res, err := Inpaint(m, ws, x, missing, n, InpaintConfig{Steps: 1, LR: lr, Seed: 9, Normalise: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.Start {
		if !(res.Final[i] > res.Start[i]) {
			t.Fatalf("image %d: the step of %g was undone (%.4f -> %.4f); the test needs it kept", i, lr, res.Start[i], res.Final[i])
		}
	}
	moved := 0
	for j := range x {
		if !missing[j] || x[j] == 0 || x[j] == 1 {
			continue // observed, or clamped at the data's bounds
		}
		d := math.Abs(float64(x[j]) - float64(start[j]))
		if math.Abs(d-lr) > 1e-6 {
			t.Fatalf("pixel %d moved by %.3g, want the step %g", j, d, lr)
		}
		moved++
	}
	if moved < n*mnist.Pixels/4 {
		t.Fatalf("only %v pixels moved freely", moved)
	}
}

func TestInpaintRefusesBadSettings(t *testing.T) {
	m, err := flow.New(tinyConfig().Model)
	if err != nil {
		t.Fatal(err)
	}
	ws := flow.NewWorkspace(m.Config, 1)
	x := make([]float32, m.Config.Dim)
	miss := make([]bool, m.Config.Dim)
	for _, c := range []InpaintConfig{{Steps: -1, LR: 1}, {Steps: 1}, {Steps: 1, LR: -1}} {
		if _, err := Inpaint(m, ws, x, miss, 1, c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if _, err := Inpaint(m, ws, x, miss, 2, InpaintConfig{Steps: 1, LR: 1}); err == nil {
		t.Error("two images of one image's buffer accepted")
	}
}
