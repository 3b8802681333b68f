package flow

import (
	"math"
	"testing"
)

// A step on several threads gives bitwise the single thread's gradient and
// log-likelihood, including at shapes where halving a product crosses
// OpenBLAS's small-matrix threshold (784 x 16 at 256 rows, 784 x 32 at 100):
// the work is cut the same way whatever the thread count. With gonum's
// products every element is summed in one order however a product is cut,
// so without OpenBLAS this checks only that the parts run on the pool cover
// the work as the parts run in turn do; a cut that followed the threads
// fails it with OpenBLAS only.
func TestSplitStepEqualsOneThread(t *testing.T) {
	if defaultPool().n < 2 {
		t.Skip("GOMAXPROCS is 1: nothing to split")
	}
	prev := BLASThreads()
	t.Cleanup(func() { SetBLASThreads(prev) })
	for _, tc := range []struct{ dim, hidden, layers, n int }{
		{64, 100, 3, 45}, {784, 16, 1, 256}, {784, 32, 1, 100}, {784, 32, 1, 16},
		{66, 47, 1, 1}, {34, 17, 2, 3},
	} {
		m, err := New(Config{Dim: tc.dim, Couplings: 4, Hidden: tc.hidden, HiddenLayers: tc.layers, Prior: Logistic})
		if err != nil {
			t.Fatal(err)
		}
		m.Init(3)
		for i := range m.P.Scale {
			m.P.Scale[i] = float32(i%5) * 0.01
		}
		x := randomBatch(tc.n, m.Config.Dim, 9)
		gradient := func(threads int) ([]float32, float64) {
			SetBLASThreads(threads)
			g := make([]float32, m.NumParams())
			ll := m.Gradient(NewWorkspace(m.Config, tc.n), x, tc.n, g)
			return g, ll
		}
		want, wantLL := gradient(1)
		for _, threads := range []int{2, 3, 4} {
			got, gotLL := gradient(threads)
			if math.Float64bits(gotLL) != math.Float64bits(wantLL) {
				t.Errorf("%+v, %d threads: log-likelihood %v, one thread %v", tc, threads, gotLL, wantLL)
			}
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%+v, %d threads: gradient[%d] = %v, one thread %v", tc, threads, i, got[i], want[i])
				}
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

// The forward pass's column cut covers every column once, in at most two
// parts, with the first part's end at a multiple of columnAlign columns.
func TestColumnCut(t *testing.T) {
	for _, out := range []int{1, 16, 31, 32, 33, 45, 47, 100, 392, 1000} {
		parts := columnParts(out)
		next := 0
		for i := range parts {
			c0, c1 := columnCut(out, parts, i)
			if c0 != next || c1 <= c0 {
				t.Fatalf("out %d, part %d of %d: columns [%d, %d), want a non-empty part from %d", out, i, parts, c0, c1, next)
			}
			if i < parts-1 && c1%columnAlign != 0 {
				t.Errorf("out %d: part %d ends at %d, not at a multiple of %d columns", out, i, c1, columnAlign)
			}
			next = c1
		}
		if next != out {
			t.Errorf("out %d: the parts end at %d", out, next)
		}
		if want := 1 + min(out/32, 1); parts != want {
			t.Errorf("out %d: %d parts, want %d", out, parts, want)
		}
	}
}
