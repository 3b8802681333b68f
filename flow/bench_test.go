package flow

import (
	"fmt"
	"testing"

	"github.com/nice-flow/nice/internal/f32"
)

// BenchmarkTrainStep is one full-size training step at batch 256: forward,
// backward and the Adam update. About 115 MFLOP per sample, almost all of it in
// matrix products. Run with -tags openblas for the fast path; set GOMAXPROCS
// and OPENBLAS_NUM_THREADS to choose the thread count.
func BenchmarkTrainStep(b *testing.B) {
	const batch = 256
	m, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	m.Init(1)
	a := NewAdam(DefaultAdam(), m.NumParams())
	ws := NewWorkspace(m.Config, batch)
	g := make([]float32, m.NumParams())
	x := randomBatch(batch, m.Config.Dim, 1)
	step := func() {
		m.Gradient(ws, x, batch, g)
		if _, err := a.Update(m.Params, g, batch); err != nil {
			b.Fatal(err)
		}
	}
	step() // warm up: workspace views, BLAS buffers, thread pools
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		step()
	}
	b.StopTimer()
	sps := float64(b.N*batch) / b.Elapsed().Seconds()
	b.ReportMetric(sps, "samples/s")
	b.ReportMetric(sps*FLOPsPerSample(m.Config)/1e9, "GFLOPS")
	b.Logf("BLAS %s, %d threads", BLASName(), BLASThreads())
}

// BenchmarkAdamUpdate is the optimiser step over the full model's 19.2 M
// parameters: memory-bound, it reads and writes four buffers of 77 MB.
func BenchmarkAdamUpdate(b *testing.B) {
	n := NewLayout(DefaultConfig()).Size()
	a := NewAdam(DefaultAdam(), n)
	p := make([]float32, n)
	g := randomBatch(n, 1, 3)
	if _, err := a.Update(p, g, 256); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(n) * 4 * 7)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := a.Update(p, g, 256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProducts times, on one BLAS thread, the matrix products of a
// step's 1000 x 1000 hidden layer at batch 256: the forward product of half
// the columns (the forward pass runs the two halves side by side), the weight
// gradient and the input gradient (the backward pass runs these two side by
// side). A step at two threads is as fast as the slower of each pair.
func BenchmarkProducts(b *testing.B) {
	const n, in, out = 256, 1000, 1000
	a := randomBatch(n, in, 1)
	w := randomBatch(in, out, 2)
	delta := randomBatch(n, out, 3)
	c := make([]float32, max(in*out, n*in))
	_, half := columnCut(out, 2, 0)
	for _, p := range []struct {
		name    string
		flops   float64
		product func()
	}{
		{"forward-half", 2 * n * in * float64(half), func() { gemm(false, false, n, half, in, 1, a, in, w, out, 0, c, out) }},
		{"weight-gradient", 2 * n * in * out, func() { gemm(true, false, in, out, n, 1, a, in, delta, out, 0, c, out) }},
		{"input-gradient", 2 * n * in * out, func() { gemm(false, true, n, in, out, 1, delta, out, w, out, 0, c, in) }},
	} {
		b.Run(p.name, func(b *testing.B) {
			p.product()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.product()
			}
			b.ReportMetric(p.flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOPS")
		})
	}
}

// BenchmarkGradient is a worker's part of a step: the gradient of its shard of
// a 256-sample batch when N workers share it (N = 1, 2, 4). Run two or four
// copies at once with GOMAXPROCS=1 to see what sharing the cores costs.
func BenchmarkGradient(b *testing.B) {
	for _, batch := range []int{256, 128, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			m, err := New(DefaultConfig())
			if err != nil {
				b.Fatal(err)
			}
			m.Init(1)
			ws := NewWorkspace(m.Config, batch)
			g := make([]float32, m.NumParams())
			x := randomBatch(batch, m.Config.Dim, 1)
			m.Gradient(ws, x, batch, g) // warm up
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				m.Gradient(ws, x, batch, g)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/gradient")
		})
	}
}

// BenchmarkNormDigest is what a worker does to the reduced gradient before
// it reports a step: its norm and its CRC-32C, as two passes over the
// full model's 77 MB and as the fused pass.
func BenchmarkNormDigest(b *testing.B) {
	n := NewLayout(DefaultConfig()).Size()
	g := randomBatch(1, n, 1)
	a := NewAdam(DefaultAdam(), n)
	b.Run("two-passes", func(b *testing.B) {
		b.SetBytes(int64(4 * n))
		for i := 0; i < b.N; i++ {
			a.GradNorm(g)
			f32.CRC(0, g)
		}
	})
	b.Run("fused", func(b *testing.B) {
		b.SetBytes(int64(4 * n))
		for i := 0; i < b.N; i++ {
			a.GradNormDigest(g)
		}
	})
}
