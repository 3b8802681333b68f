// Package f32 views float32 buffers as their bytes and takes their CRC-32C,
// the digest replicas compare. The ring's wire format, the state files and
// the digests all treat a []float32 as its memory, which needs a
// little-endian machine: importing this package on another one panics.
package f32

import (
	"hash/crc32"
	"unsafe"
)

func init() {
	x := uint16(1)
	if *(*byte)(unsafe.Pointer(&x)) != 1 {
		panic("f32: nice treats float32 buffers as little-endian bytes; this machine is big-endian")
	}
}

// Bytes views f as its little-endian bytes, without copying.
func Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// PieceBytes is the most a long pass over a buffer (a CRC, a copy, a hash,
// a write) handles in one call. Such loops are assembly and cannot be
// preempted: one CRC over a 77 MB buffer (about 7 ms) kept a GOMAXPROCS=1
// worker from answering its ring neighbours for that long.
const PieceBytes = 1 << 20

// CRC continues the CRC-32C crc over f's bytes (start with 0), in pieces
// of 1 MiB.
func CRC(crc uint32, f []float32) uint32 {
	b := Bytes(f)
	for len(b) > 0 {
		k := min(len(b), PieceBytes)
		crc = crc32.Update(crc, castagnoli, b[:k])
		b = b[k:]
	}
	return crc
}

// castagnoliReflected is the CRC-32C polynomial in the reflected bit order
// hash/crc32 works in: bit 31 is the coefficient of x^0.
const castagnoliReflected = 0x82F63B78

// mulMod returns a·b modulo the CRC-32C polynomial, both operands and the
// result in the reflected order.
func mulMod(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		// b·x: a right shift in the reflected order, reduced when x^32 appears.
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
	return p
}

// pow2 holds x^(2^k) modulo the polynomial, for multiplying by x^(8n) with
// n below 2^64.
var pow2 = func() (t [67]uint32) {
	t[0] = 1 << 30 // x^1
	for k := 1; k < len(t); k++ {
		t[k] = mulMod(t[k-1], t[k-1])
	}
	return t
}()

// CombineCRC returns the CRC-32C of A followed by B from crcA and crcB, the
// CRC-32Cs of A and of B, and the length of B in bytes. A CRC is linear in
// its message apart from its initial and final inversions, which cancel
// here: crc(A‖B) = crc(B) xor crc(A)·x^(8·|B|) modulo the polynomial.
func CombineCRC(crcA, crcB uint32, lenB int) uint32 {
	p := uint32(1) << 31 // x^0
	n := uint64(lenB)
	for k := 3; n != 0; k, n = k+1, n>>1 { // 8·lenB = lenB << 3
		if n&1 != 0 {
			p = mulMod(pow2[k], p)
		}
	}
	return mulMod(p, crcA) ^ crcB
}
