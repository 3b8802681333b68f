package ring

import "github.com/nice-flow/nice/internal/f32"

// addFloats adds src element-wise into dst (len(src) <= len(dst)).
func addFloats(dst, src []float32) {
	if len(src) == 0 {
		return
	}
	addTo(dst[:len(src)], f32.Bytes(src))
}

// addBytes adds the little-endian floats in b to dst (len(b) >= 4*len(dst)).
// b may be unaligned: it is gRPC's receive buffer at whatever offset the
// payload starts.
func addBytes(dst []float32, b []byte) {
	if len(dst) == 0 {
		return
	}
	addTo(dst, b[:4*len(dst)])
}

// addBytesGeneric is the portable addBytes: eight at a time, with the
// bounds checked once per eight. Every element is dst[i] + src[i], one
// IEEE addition, whichever implementation runs, so results do not depend
// on the machine.
func addBytesGeneric(dst []float32, b []byte) {
	b = b[:4*len(dst)]
	for len(dst) >= 8 {
		d, s := dst[:8:8], b[:32:32]
		d[0] += f32le(s[0:])
		d[1] += f32le(s[4:])
		d[2] += f32le(s[8:])
		d[3] += f32le(s[12:])
		d[4] += f32le(s[16:])
		d[5] += f32le(s[20:])
		d[6] += f32le(s[24:])
		d[7] += f32le(s[28:])
		dst, b = dst[8:], b[32:]
	}
	for i := range dst {
		dst[i] += f32le(b[4*i:])
	}
}
