package flow

import (
	"testing"
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
