package ring

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Wire is how a ring sends the floats of its collectives.
type Wire uint8

const (
	// WireFloat32 sends every float as it is: the sum is exact float32
	// arithmetic, in the ring's order.
	WireFloat32 Wire = iota
	// WireBFloat16 sends every float rounded to bfloat16 (the upper half of
	// a float32, rounded to nearest even): half the bytes. Each member
	// rounds what it sends in its own buffer first, so the owner of a
	// chunk holds the rounded values it sends and every member ends with
	// the same floats; the partial sums of the reduce-scatter are rounded
	// at every hop, so the result is within about N·2⁻⁸ (relative) of the
	// float32 sum.
	WireBFloat16
)

// ParseWire reads "fp32" or "bf16".
func ParseWire(s string) (Wire, error) {
	switch s {
	case "fp32", "float32", "":
		return WireFloat32, nil
	case "bf16", "bfloat16":
		return WireBFloat16, nil
	}
	return 0, fmt.Errorf("gradient wire format %q: want fp32 or bf16", s)
}

func (w Wire) String() string {
	switch w {
	case WireFloat32:
		return "fp32"
	case WireBFloat16:
		return "bf16"
	}
	return fmt.Sprintf("wire(%d)", uint8(w))
}

// roundBF16 rounds every float of f to the nearest bfloat16 (ties to
// even), in place: its low 16 bits become zero. A NaN stays a NaN; a
// finite float beyond bfloat16's range becomes an infinity, as the
// conversion in hardware does.
func roundBF16(f []float32) {
	for i, v := range f {
		b := math.Float32bits(v)
		if b&0x7fffffff > 0x7f800000 {
			b |= 0x00400000 // NaN: keep it one, whatever its payload
		} else {
			b += 0x7fff + (b>>16)&1
		}
		f[i] = math.Float32frombits(b &^ 0xffff)
	}
}

// packBF16 writes the upper halves of the little-endian float32s src (4
// bytes each, already rounded) into dst (2 bytes each).
func packBF16(dst, src []byte) {
	for i := 0; i+4 <= len(src); i += 4 {
		dst[i/2], dst[i/2+1] = src[i+2], src[i+3]
	}
}

// bf16le is the float32 whose upper half is the little-endian b[0:2].
func bf16le(b []byte) float32 {
	return math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16)
}
