package flow

import (
	"math"
	"testing"

	"github.com/nice-flow/nice/mnist"
)

// Inverse(Forward(x)) == x on real MNIST batches with the full-size model.
func TestInverseUndoesForwardOnMNIST(t *testing.T) {
	dir, err := mnist.FindDir("")
	if err != nil {
		t.Skipf("real MNIST not available here: %v", err)
	}
	_, test, err := mnist.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m.Init(3)
	for j := range m.P.Scale { // a non-trivial scaling too
		m.P.Scale[j] = float32(math.Sin(float64(j))) * 0.5
	}
	const n = 32
	ws := NewWorkspace(m.Config, n)
	x := make([]float32, n*784)
	h := make([]float32, n*784)
	back := make([]float32, n*784)
	for batch := 0; batch < 2; batch++ {
		idx := make([]int32, n)
		for i := range idx {
			idx[i] = int32(batch*5000 + i*37)
		}
		test.FillBatch(x, idx, 1, 0)
		m.Forward(ws, x, n, h)
		m.Inverse(ws, h, n, back)
		var worst float64
		for i := range x {
			worst = math.Max(worst, math.Abs(float64(back[i]-x[i])))
		}
		t.Logf("batch %d: max |inverse(forward(x)) - x| = %.2g", batch, worst)
		if worst > 1e-4 {
			t.Fatalf("batch %d: inverse(forward(x)) differs from x by %g", batch, worst)
		}
	}
}
