package flow

import (
	"hash/crc32"
	"unsafe"
)

// castagnoli is the CRC-32C table the project's digests use.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// castagnoliReflected is the CRC-32C polynomial in the reflected bit order
// hash/crc32 works in: bit 31 is the coefficient of x^0.
const castagnoliReflected = 0x82F63B78

// crcMulMod returns a·b modulo the CRC-32C polynomial, both operands and the
// result in the reflected order.
func crcMulMod(a, b uint32) uint32 {
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

// crcPow2 holds x^(2^k) modulo the polynomial, for multiplying by x^(8n)
// with n below 2^64.
var crcPow2 = func() (t [67]uint32) {
	t[0] = 1 << 30 // x^1
	for k := 1; k < len(t); k++ {
		t[k] = crcMulMod(t[k-1], t[k-1])
	}
	return t
}()

// crcCombine returns the CRC-32C of A followed by B from crcA and crcB, the
// CRC-32Cs of A and of B, and the length of B in bytes. A CRC is linear in
// its message apart from its initial and final inversions, which cancel here:
// crc(A‖B) = crc(B) xor crc(A)·x^(8·|B|) modulo the polynomial.
func crcCombine(crcA, crcB uint32, lenB int) uint32 {
	p := uint32(1) << 31 // x^0
	n := uint64(lenB)
	for k := 3; n != 0; k, n = k+1, n>>1 { // 8·lenB = lenB << 3
		if n&1 != 0 {
			p = crcMulMod(crcPow2[k], p)
		}
	}
	return crcMulMod(p, crcA) ^ crcB
}

// f32Bytes views f as its little-endian bytes (the machines nice runs on
// are little-endian; train's state files say so in their format).
func f32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
