package mnist

import "fmt"

// Image geometry and the sizes of the published sets.
const (
	Rows   = 28
	Cols   = 28
	Pixels = Rows * Cols // bytes per image, and floats per dequantised image

	TrainSize = 60000
	TestSize  = 10000
	// ValidationSize is how many of the last training images the paper's
	// code holds out for validation (see Split).
	ValidationSize = 10000
)

// Set is a sequence of N labelled 28x28 greyscale images held in memory.
//
// Images holds N*Pixels bytes, image after image, each row-major, 0 the
// background and 255 full ink. Labels holds the N digits 0..9.
type Set struct {
	N      int
	Images []uint8
	Labels []uint8
}

// Image returns the Pixels bytes of image i, sharing memory with the set.
// It panics if i is out of range.
func (s *Set) Image(i int) []uint8 {
	return s.Images[i*Pixels : (i+1)*Pixels : (i+1)*Pixels]
}

// Split returns the first N-nTail images as head and the last nTail as tail.
// Both are views sharing memory with s; nothing is copied. A sample's index
// in head is its index in s; in tail it is its index in s minus (N-nTail).
// It panics unless 0 <= nTail <= N.
func (s *Set) Split(nTail int) (head, tail *Set) {
	if nTail < 0 || nTail > s.N {
		panic(fmt.Sprintf("mnist: Split(%d) of a set of %d images", nTail, s.N))
	}
	k := s.N - nTail
	head = &Set{N: k, Images: s.Images[: k*Pixels : k*Pixels], Labels: s.Labels[:k:k]}
	tail = &Set{N: nTail, Images: s.Images[k*Pixels:], Labels: s.Labels[k:]}
	return head, tail
}

// FillBatch writes the dequantised images indices[j] of s into
// dst[j*Pixels:(j+1)*Pixels] (see Dequantize). The noise of a sample is keyed
// by its index in s, so it does not depend on which worker fills which batch.
// It does not allocate; it panics if dst is shorter than len(indices)*Pixels
// or an index is out of range.
func (s *Set) FillBatch(dst []float32, indices []int32, seed, epoch uint64) {
	dst = dst[:len(indices)*Pixels]
	for j, idx := range indices {
		Dequantize(dst[j*Pixels:(j+1)*Pixels], s.Image(int(idx)), seed, epoch, uint64(idx))
	}
}
