package mnist

import (
	"math/bits"
	"math/rand/v2"
)

// golden is 2^64 divided by the golden ratio, rounded to odd: adding it
// walks through all 2^64 counters before repeating.
const golden = 0x9e3779b97f4a7c15

// Domain separators, so the noise and the permutation drawn from the same
// seed are unrelated.
const (
	noiseDomain = 0x6e6f697365a5a5a5
	permDomain  = 0x7065726d5a5a5a5a
)

// mix64 is a bijective 64-bit finaliser (the splitmix64 output function): each
// input bit affects every output bit, so consecutive counters give outputs
// that look independent.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// sampleKey derives the counter base of one sample's noise. For a fixed seed
// each stage is a bijection of the new counter, so distinct (epoch, index)
// pairs collide only by 64-bit chance.
func sampleKey(seed, epoch, index uint64) uint64 {
	k := mix64(seed ^ noiseDomain)
	k = mix64(k + epoch*golden)
	return mix64(k + index*golden)
}

// level returns (k + r/65536)/256 exactly: the integer k<<16|r is below 2^24,
// so float32 holds it without rounding and the result stays in
// [k/256, (k+1)/256).
func level(k uint8, r uint64) float32 {
	return float32(uint32(k)<<16|uint32(r&0xffff)) * (1.0 / (1 << 24))
}

// Dequantize writes x = (k + u)/256 for every pixel k of pixels into dst,
// with u in [0,1) a pure function of (seed, epoch, index, pixel position): a
// counter-based generator, not a stream, so any worker computing sample
// index of epoch gets the same values. u has 16-bit resolution (1/65536),
// which keeps x exact in float32 and strictly inside its bin; the finest
// float32 step near x = 1 is that size anyway.
//
// Use index = the sample's index in its set, and a fixed (seed, epoch) when
// scoring. Dequantize does not allocate; it panics if dst is shorter than
// pixels.
func Dequantize(dst []float32, pixels []uint8, seed, epoch, index uint64) {
	n := len(pixels)
	dst = dst[:n]
	ctr := sampleKey(seed, epoch, index)
	i := 0
	// One 64-bit hash gives the 16-bit noise of four pixels.
	for ; i+4 <= n; i += 4 {
		ctr += golden
		h := mix64(ctr)
		d := dst[i : i+4 : i+4]
		p := pixels[i : i+4 : i+4]
		d[0] = level(p[0], h)
		d[1] = level(p[1], h>>16)
		d[2] = level(p[2], h>>32)
		d[3] = level(p[3], h>>48)
	}
	if i < n {
		ctr += golden
		h := mix64(ctr)
		for ; i < n; i++ {
			dst[i] = level(pixels[i], h)
			h >>= 16
		}
	}
}

// Permutation fills dst with a permutation of 0..len(dst)-1 that is a pure
// function of (seed, epoch): a Fisher-Yates shuffle driven by a PCG generator
// seeded from both. The shuffle and the bounded draws are written here, not
// taken from math/rand, so the order cannot change with the Go release (a
// checkpoint resumed under a newer toolchain sees the same batches). It does
// not allocate.
func Permutation(dst []int32, seed, epoch uint64) {
	for i := range dst {
		dst[i] = int32(i)
	}
	hi := mix64(seed ^ permDomain)
	var src rand.PCG
	src.Seed(hi, mix64(hi+epoch*golden))
	for i := len(dst) - 1; i > 0; i-- {
		j := below(&src, uint64(i)+1)
		dst[i], dst[j] = dst[j], dst[i]
	}
}

// below returns a uniform integer in [0, n), n > 0, by multiply-and-shift
// with rejection of the few biased products.
func below(src *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		threshold := -n % n // 2^64 mod n
		for lo < threshold {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}
