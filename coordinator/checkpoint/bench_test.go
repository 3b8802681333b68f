package checkpoint

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// BenchmarkBoltSave230MB saves a state the size of the real one (parameters
// plus two Adam moments, ~230 MB) in 4 MiB chunks, fsync included. It runs
// only when asked for (-bench), and never under -short. Run it with
// -benchtime=5x or so: each iteration writes 230 MB. "premapped" uses the
// default InitialMmapSize, "grow" lets bbolt remap as the file grows.
func BenchmarkBoltSave230MB(b *testing.B) {
	b.Run("premapped", func(b *testing.B) { benchSave(b, BoltOptions{}) })
	b.Run("grow", func(b *testing.B) { benchSave(b, BoltOptions{InitialMmapSize: -1}) })
}

func benchSave(b *testing.B, opts BoltOptions) {
	if testing.Short() {
		b.Skip("writes 230 MB per iteration")
	}
	const size = 230 << 20
	blob := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= size; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			blob[i+j] = byte(v >> (8 * j))
		}
	}
	s, err := OpenBolt(filepath.Join(b.TempDir(), "ckpt.db"), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		if _, err := s.Save(context.Background(), Meta{Step: uint64(i)}, blob); err != nil {
			b.Fatal(err)
		}
	}
}
