//go:build amd64 && !purego

package ring

import "unsafe"

// addTo adds the len(dst) little-endian floats at the start of b to dst
// with SSE (part of every amd64): four floats per instruction, unaligned
// loads, the same one addition per element as the portable loop.
func addTo(dst []float32, b []byte) {
	_ = b[4*len(dst)-1] // the assembly reads 4*len(dst) bytes of b
	addSSE(&dst[0], unsafe.SliceData(b), len(dst))
}

// addSSE adds src[0:n] (little-endian float32, any alignment) to dst[0:n].
//
//go:noescape
func addSSE(dst *float32, src *byte, n int)
