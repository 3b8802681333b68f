package ring

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/mem"

	"github.com/nice-flow/nice/internal/f32"
)

func TestRoundBF16(t *testing.T) {
	for _, tc := range []struct{ in, want float32 }{
		{1, 1},
		// bfloat16 keeps 7 bits of mantissa: its ulp at 1 is 1/128.
		{1 + 1.0/256, 1},           // a tie, to the even neighbour below
		{1 + 3.0/256, 1 + 1.0/64},  // a tie, to the even neighbour above
		{1 + 1.0/512, 1},           // below half an ulp
		{1 + 3.0/512, 1 + 1.0/128}, // above half an ulp
		{-2.5, -2.5},
		{0, 0},
		{float32(math.Inf(1)), float32(math.Inf(1))},
		{math.MaxFloat32, float32(math.Inf(1))},
	} {
		f := []float32{tc.in}
		roundBF16(f)
		if f[0] != tc.want {
			t.Errorf("roundBF16(%v) = %v, want %v", tc.in, f[0], tc.want)
		}
		roundBF16(f)
		if f[0] != tc.want {
			t.Errorf("rounding %v twice gave %v", tc.in, f[0])
		}
	}
	nan := []float32{float32(math.NaN())}
	roundBF16(nan)
	if !math.IsNaN(float64(nan[0])) {
		t.Errorf("a NaN became %v", nan[0])
	}
}

// With bfloat16 on the wire every member ends with the same floats, on
// both transports the same ones, each within the roundings of N hops of
// the exact sum; the second collective of the same inputs gives the same
// bits.
func TestAllReduceBFloat16(t *testing.T) {
	verifyNoLeaks(t)
	const p = 10007
	var first []float32
	for _, tr := range transports {
		for _, n := range []int{2, 3, 4} {
			t.Run(fmt.Sprintf("%s/N=%d", tr.name, n), func(t *testing.T) {
				cfg := DefaultConfig()
				cfg.FrameBytes = 4096 // many frames, and values split between gRPC buffers
				cfg.FrameTimeoutFloor = 10 * time.Second
				c := tr.make(t, n, cfg, nil)
				for _, m := range c.members {
					m.SetWire(WireBFloat16)
				}
				c.configure(1)
				bufs := makeBufs(n, p)
				sum, mag := inputs(bufs, 42)
				c.mustAllReduce(bufs)
				for j, v := range bufs[0] {
					if tol := float64(n) * mag[j] / 256; math.Abs(float64(v)-sum[j]) > tol {
						t.Fatalf("element %d: got %v, want %v ± %v", j, v, sum[j], tol)
					}
					if math.Float32bits(v)&0xffff != 0 {
						t.Fatalf("element %d: %v is not a bfloat16", j, v)
					}
				}
				for i := 1; i < n; i++ {
					if !bitsEqual(bufs[i], bufs[0]) {
						t.Fatalf("member %d differs from member 0", i)
					}
				}
				if n == 3 {
					if first == nil {
						first = append([]float32(nil), bufs[0]...)
					} else if !bitsEqual(first, bufs[0]) {
						t.Fatal("the gRPC ring's sum differs from the in-memory ring's")
					}
				}
			})
		}
	}
}

// A member of another wire format is refused at its first frame, on both
// transports, naming the width.
func TestAllReduceRefusesAnotherWire(t *testing.T) {
	verifyNoLeaks(t)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.FrameTimeoutFloor = 10 * time.Second
			c := tr.make(t, 2, cfg, nil)
			c.members[1].SetWire(WireBFloat16)
			c.configure(1)
			errs, _ := c.allReduce(t.Context(), makeBufs(2, 100))
			found := false
			for _, err := range errs {
				if err != nil && strings.Contains(err.Error(), "bytes per float") {
					found = true
				}
			}
			if !found {
				t.Fatalf("errors %v: none names the bytes per float", errs)
			}
		})
	}
}

// A bfloat16 frame survives the codec split into buffers of every size,
// and a width other than 2 or 4 is refused.
func TestCodecBFloat16(t *testing.T) {
	src := []float32{1.5, -2, 3.25, 1e-3, -7e5}
	roundBF16(src)
	out := outFrame{h: FrameHeader{Generation: 3, Seq: 1, Total: 5, Width: 2}, data: f32.Bytes(src), release: newReleaseTracker()}
	whole := out.marshal().Materialize()
	for cut := 1; cut < len(whole); cut++ {
		dst := make([]float32, 5)
		in := inFrame{want: &FrameHeader{Generation: 3, Seq: 1, Total: 5, Width: 2}, dst: dst, op: ApplyCopy}
		in.unmarshal(mem.BufferSlice{mem.SliceBuffer(whole[:cut]), mem.SliceBuffer(whole[cut:])})
		if in.err != nil || !bitsEqual(dst, src) {
			t.Fatalf("cut at %d: %v, %v", cut, in.err, dst)
		}
	}
	bad := append([]byte(nil), whole...)
	for i := 0; i+1 < len(bad); i++ {
		if bad[i] == fieldWidth<<3 && bad[i+1] == 2 {
			bad[i+1] = 3
		}
	}
	in := inFrame{want: &FrameHeader{Generation: 3, Seq: 1, Total: 5, Width: 2}, dst: make([]float32, 5)}
	in.unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)})
	if in.err == nil || !strings.Contains(in.err.Error(), "3 bytes per float") {
		t.Fatalf("a width of 3: %v", in.err)
	}
}
