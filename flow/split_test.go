package flow

import (
	"math"
	"testing"
)

// A step split among threads gives bitwise the single thread's gradient and
// log-likelihood: every output element is one product along the same inner
// dimension, whichever part computes it.
func TestSplitStepEqualsOneThread(t *testing.T) {
	if defaultPool().n < 2 {
		t.Skip("GOMAXPROCS is 1: nothing to split")
	}
	m, err := New(Config{Dim: 64, Couplings: 4, Hidden: 100, HiddenLayers: 3, Prior: Logistic})
	if err != nil {
		t.Fatal(err)
	}
	m.Init(3)
	for i := range m.P.Scale {
		m.P.Scale[i] = float32(i%5) * 0.01
	}
	const n = 45
	x := randomBatch(n, m.Config.Dim, 9)
	prev := BLASThreads()
	t.Cleanup(func() { SetBLASThreads(prev) })
	gradient := func(threads int) ([]float32, float64) {
		SetBLASThreads(threads)
		g := make([]float32, m.NumParams())
		ll := m.Gradient(NewWorkspace(m.Config, n), x, n, g)
		return g, ll
	}
	want, wantLL := gradient(1)
	for _, threads := range []int{2, 3, 4} {
		got, gotLL := gradient(threads)
		if math.Float64bits(gotLL) != math.Float64bits(wantLL) {
			t.Errorf("%d threads: log-likelihood %v, one thread %v", threads, gotLL, wantLL)
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%d threads: gradient[%d] = %v, one thread %v", threads, i, got[i], want[i])
			}
		}
	}
}

// A warm step, split among threads or not, allocates nothing.
func TestStepAllocatesNothing(t *testing.T) {
	if !FastBLAS() {
		t.Skip("gonum's products allocate their own buffers")
	}
	m, err := New(Config{Dim: 64, Couplings: 4, Hidden: 100, HiddenLayers: 3, Prior: Logistic})
	if err != nil {
		t.Fatal(err)
	}
	m.Init(3)
	const n = 40
	ws := NewWorkspace(m.Config, n)
	g := make([]float32, m.NumParams())
	x := randomBatch(n, m.Config.Dim, 1)
	a := NewAdam(DefaultAdam(), m.NumParams())
	step := func() {
		m.Gradient(ws, x, n, g)
		if _, err := a.Update(m.Params, g, n); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if allocs := testing.AllocsPerRun(20, step); allocs != 0 {
		t.Fatalf("a step allocates %v times (%d threads)", allocs, BLASThreads())
	}
}
