package mnist

import (
	"math"
	"slices"
	"testing"
)

// allPixels is one image whose pixels take every value 0..255 (and some again).
func allPixels() []uint8 {
	p := make([]uint8, Pixels)
	for i := range p {
		p[i] = uint8(i * 7)
	}
	return p
}

func TestDequantizeInBin(t *testing.T) {
	pix := allPixels()
	pix[0], pix[1] = 0, 255
	dst := make([]float32, Pixels)
	for index := uint64(0); index < 200; index++ {
		Dequantize(dst, pix, 42, 3, index)
		for i, x := range dst {
			lo, hi := float32(pix[i])/256, float32(int(pix[i])+1)/256
			if !(x >= lo && x < hi) {
				t.Fatalf("index %d pixel %d (k=%d): x=%v not in [%v, %v)", index, i, pix[i], x, lo, hi)
			}
		}
	}
}

func TestLevelEdges(t *testing.T) {
	for k := 0; k < 256; k++ {
		lo, hi := level(uint8(k), 0), level(uint8(k), 0xffff)
		if lo != float32(k)/256 || hi >= float32(k+1)/256 || hi <= lo {
			t.Errorf("k=%d: u=0 gives %v, u=max gives %v", k, lo, hi)
		}
	}
}

func TestDequantizeDeterministic(t *testing.T) {
	pix := allPixels()
	get := func(seed, epoch, index uint64) []float32 {
		dst := make([]float32, Pixels)
		Dequantize(dst, pix, seed, epoch, index)
		return dst
	}
	base := get(1, 2, 3)
	if !slices.Equal(base, get(1, 2, 3)) {
		t.Fatal("same (seed, epoch, index) gave different values")
	}
	for _, c := range []struct {
		name               string
		seed, epoch, index uint64
	}{
		{"seed", 2, 2, 3}, {"epoch", 1, 3, 3}, {"index", 1, 2, 4}, {"swapped epoch and index", 1, 3, 2},
	} {
		other := get(c.seed, c.epoch, c.index)
		same := 0
		for i := range base {
			if base[i] == other[i] {
				same++
			}
		}
		// Independent 16-bit draws agree by chance about once in 65536.
		if same > 3 {
			t.Errorf("changing the %s left %d of %d values unchanged", c.name, same, Pixels)
		}
	}
}

// TestDequantizeGolden pins the generator: checkpoints resumed by a later
// build must see the same noise.
func TestDequantizeGolden(t *testing.T) {
	dst := make([]float32, 6)
	Dequantize(dst, []uint8{0, 1, 2, 128, 254, 255}, 7, 1, 12345)
	want := []float32{0.00070875883, 0.0056210756, 0.009617925, 0.50349504, 0.99502575, 0.99870443}
	if !slices.Equal(dst, want) {
		t.Errorf("Dequantize golden values %v, want %v", dst, want)
	}
}

func TestDequantizeUniform(t *testing.T) {
	// u = 256x - k over 512 images of zeros: mean near 1/2 and 16 equal bins.
	zeros := make([]uint8, Pixels)
	dst := make([]float32, Pixels)
	var bins [16]int
	var sum float64
	const images = 512
	for index := uint64(0); index < images; index++ {
		Dequantize(dst, zeros, 9, 0, index)
		for _, x := range dst {
			u := float64(x) * 256
			sum += u
			bins[int(u*16)]++
		}
	}
	n := float64(images * Pixels)
	if mean := sum / n; math.Abs(mean-0.5) > 0.003 { // sd of the mean is 0.0005
		t.Errorf("mean of u = %v, want 0.5", mean)
	}
	chi2 := 0.0
	for _, c := range bins {
		d := float64(c) - n/16
		chi2 += d * d / (n / 16)
	}
	if chi2 > 50 { // 15 degrees of freedom: 50 is far in the tail
		t.Errorf("u histogram %v: chi-square %v", bins, chi2)
	}
}

func TestDequantizeOddLength(t *testing.T) {
	pix := []uint8{10, 20, 30, 40, 50, 60, 70}
	dst := make([]float32, len(pix))
	Dequantize(dst, pix, 1, 1, 1)
	full := make([]float32, 8)
	Dequantize(full, append(slices.Clone(pix), 80), 1, 1, 1)
	if !slices.Equal(dst, full[:7]) {
		t.Errorf("7 pixels gave %v, the first 7 of 8 gave %v", dst, full[:7])
	}
}

func TestDequantizeNoAlloc(t *testing.T) {
	pix := allPixels()
	dst := make([]float32, Pixels)
	if n := testing.AllocsPerRun(100, func() { Dequantize(dst, pix, 1, 2, 3) }); n != 0 {
		t.Errorf("Dequantize allocates %v times", n)
	}
}

func isPermutation(p []int32) bool {
	seen := make([]bool, len(p))
	for _, v := range p {
		if v < 0 || int(v) >= len(p) || seen[v] {
			return false
		}
		seen[v] = true
	}
	return true
}

func TestPermutation(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 1000} {
		p := make([]int32, n)
		Permutation(p, 5, 0)
		if !isPermutation(p) {
			t.Errorf("n=%d: %v is not a permutation", n, p)
		}
	}
	perm := func(seed, epoch uint64) []int32 {
		p := make([]int32, 1000)
		Permutation(p, seed, epoch)
		return p
	}
	base := perm(5, 0)
	if !slices.Equal(base, perm(5, 0)) {
		t.Error("same (seed, epoch) gave different permutations")
	}
	for _, other := range [][]int32{perm(5, 1), perm(6, 0), perm(0, 5)} {
		fixed := 0
		for i := range base {
			if base[i] == other[i] {
				fixed++
			}
		}
		if fixed > 10 { // about 1 expected
			t.Errorf("permutations for other (seed, epoch) agree at %d of 1000 places", fixed)
		}
	}
}

// TestPermutationGolden pins the shuffle (see TestDequantizeGolden).
func TestPermutationGolden(t *testing.T) {
	p := make([]int32, 10)
	Permutation(p, 1, 0)
	want := []int32{8, 1, 0, 9, 5, 2, 4, 3, 6, 7}
	if !slices.Equal(p, want) {
		t.Errorf("Permutation golden %v, want %v", p, want)
	}
}

func TestPermutationUnbiased(t *testing.T) {
	// Where element 0 lands, over many epochs, is uniform on 8 places.
	var counts [8]int
	p := make([]int32, 8)
	const trials = 8000
	for e := uint64(0); e < trials; e++ {
		Permutation(p, 3, e)
		counts[slices.Index(p, 0)]++
	}
	chi2 := 0.0
	for _, c := range counts {
		d := float64(c) - trials/8
		chi2 += d * d / (trials / 8)
	}
	if chi2 > 30 { // 7 degrees of freedom
		t.Errorf("position of element 0: %v (chi-square %v)", counts, chi2)
	}
}

func TestPermutationNoAlloc(t *testing.T) {
	p := make([]int32, 1000)
	if n := testing.AllocsPerRun(20, func() { Permutation(p, 1, 2) }); n != 0 {
		t.Errorf("Permutation allocates %v times", n)
	}
}
