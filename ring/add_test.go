package ring

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The add the codec uses (SSE on amd64) gives the bits of the portable
// loop for every length and alignment of the received bytes, special values
// included: results must not depend on which machine a member runs on.
func TestAddBytesMatchesGeneric(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-45, -1e-45, math.MaxFloat32, -math.MaxFloat32,
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 1e-40}
	for _, n := range []int{0, 1, 3, 4, 5, 15, 16, 17, 31, 33, 64, 1000, 4099} {
		for align := range 4 {
			dst := make([]float32, n)
			raw := make([]byte, 4*n+align)
			b := raw[align:]
			for i := range dst {
				dst[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10)))
				v := float32(rng.NormFloat64())
				if rng.IntN(8) == 0 {
					v = special[rng.IntN(len(special))]
				}
				if rng.IntN(8) == 0 {
					dst[i] = special[rng.IntN(len(special))]
				}
				bits := math.Float32bits(v)
				b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(bits), byte(bits>>8), byte(bits>>16), byte(bits>>24)
			}
			want := append([]float32(nil), dst...)
			addBytesGeneric(want, b)
			addBytes(dst, b)
			for i := range dst {
				if math.Float32bits(dst[i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d align=%d element %d: %v (%#x), want %v (%#x)", n, align, i, dst[i], math.Float32bits(dst[i]), want[i], math.Float32bits(want[i]))
				}
			}
		}
	}
}

func TestAddFloats(t *testing.T) {
	dst := []float32{1, 2, 3, 4, 5, 6}
	addFloats(dst, []float32{10, 20, 30, 40, 50})
	want := []float32{11, 22, 33, 44, 55, 6}
	for i := range dst {
		if dst[i] != want[i] {
			t.Fatalf("got %v, want %v", dst, want)
		}
	}
	addFloats(dst, nil)
}

// BenchmarkAddBytes adds a frame of received bytes (unaligned, as gRPC's
// buffers may be) into a gradient larger than the caches.
func BenchmarkAddBytes(b *testing.B) {
	const frame = 16 << 10 / 4
	dst := make([]float32, 8<<20)
	src := make([]byte, 4*frame+1)[1:]
	for _, impl := range []struct {
		name string
		add  func([]float32, []byte)
	}{{"generic", addBytesGeneric}, {"codec", addBytes}} {
		b.Run(fmt.Sprintf("%s/frame=%d", impl.name, 4*frame), func(b *testing.B) {
			b.SetBytes(4 * frame)
			off := 0
			for b.Loop() {
				if off+frame > len(dst) {
					off = 0
				}
				impl.add(dst[off:off+frame], src)
				off += frame
			}
		})
	}
}
