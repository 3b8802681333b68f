package mnist

import (
	"slices"
	"testing"
)

// smallSet makes a set of n images whose pixels encode their image number.
func smallSet(n int) *Set {
	s := &Set{N: n, Images: make([]uint8, n*Pixels), Labels: make([]uint8, n)}
	for i := range n {
		for p := range Pixels {
			s.Images[i*Pixels+p] = uint8(i + p)
		}
		s.Labels[i] = uint8(i % 10)
	}
	return s
}

func TestSplit(t *testing.T) {
	s := smallSet(10)
	head, tail := s.Split(3)
	if head.N != 7 || tail.N != 3 || len(head.Images) != 7*Pixels || len(tail.Images) != 3*Pixels ||
		len(head.Labels) != 7 || len(tail.Labels) != 3 {
		t.Fatalf("Split(3) of 10: head N=%d (%d px, %d labels), tail N=%d (%d px, %d labels)",
			head.N, len(head.Images), len(head.Labels), tail.N, len(tail.Images), len(tail.Labels))
	}
	for i := range 7 {
		if !slices.Equal(head.Image(i), s.Image(i)) || head.Labels[i] != s.Labels[i] {
			t.Errorf("head image %d differs from set image %d", i, i)
		}
	}
	for i := range 3 {
		if !slices.Equal(tail.Image(i), s.Image(7+i)) || tail.Labels[i] != s.Labels[7+i] {
			t.Errorf("tail image %d differs from set image %d", i, 7+i)
		}
	}
	// Views, not copies.
	if &head.Images[0] != &s.Images[0] || &tail.Images[0] != &s.Images[7*Pixels] || &tail.Labels[0] != &s.Labels[7] {
		t.Error("Split copied the data")
	}
	// Appending to the head must not overwrite the tail.
	_ = append(head.Images, 99)
	if tail.Images[0] != s.Images[7*Pixels] || tail.Images[0] == 99 {
		t.Error("appending to head changed tail")
	}
	for _, n := range []int{0, 10} {
		h, tl := s.Split(n)
		if h.N+tl.N != 10 || tl.N != n {
			t.Errorf("Split(%d): %d + %d", n, h.N, tl.N)
		}
	}
}

func TestSplitPanics(t *testing.T) {
	for _, n := range []int{-1, 11} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Split(%d) of 10 did not panic", n)
				}
			}()
			smallSet(10).Split(n)
		}()
	}
}

func TestSplitReal(t *testing.T) {
	train, _ := loadReal(t)
	fit, valid := train.Split(ValidationSize)
	if fit.N != 50000 || valid.N != 10000 {
		t.Fatalf("split of the training set: %d + %d", fit.N, valid.N)
	}
	if !slices.Equal(valid.Image(0), train.Image(50000)) || valid.Labels[9999] != train.Labels[59999] {
		t.Error("validation set is not the last 10,000 training images")
	}
}

func TestFillBatch(t *testing.T) {
	s := smallSet(20)
	indices := []int32{17, 3, 3, 0}
	dst := make([]float32, len(indices)*Pixels)
	s.FillBatch(dst, indices, 11, 4)
	want := make([]float32, Pixels)
	for j, idx := range indices {
		Dequantize(want, s.Image(int(idx)), 11, 4, uint64(idx))
		if !slices.Equal(dst[j*Pixels:(j+1)*Pixels], want) {
			t.Errorf("batch slot %d differs from Dequantize of image %d", j, idx)
		}
	}
	// The same sample gets the same noise wherever it sits in whichever batch.
	one := make([]float32, Pixels)
	s.FillBatch(one, []int32{3}, 11, 4)
	if !slices.Equal(one, dst[Pixels:2*Pixels]) {
		t.Error("noise of sample 3 depends on its batch")
	}
	if n := testing.AllocsPerRun(20, func() { s.FillBatch(dst, indices, 11, 5) }); n != 0 {
		t.Errorf("FillBatch allocates %v times", n)
	}
}

func BenchmarkFillBatch256(b *testing.B) {
	s := smallSet(1000)
	indices := make([]int32, 256)
	Permutation(indices, 1, 0)
	for i := range indices {
		indices[i] *= 3
	}
	dst := make([]float32, len(indices)*Pixels)
	b.ReportAllocs()
	b.SetBytes(int64(len(indices) * Pixels))
	for b.Loop() {
		s.FillBatch(dst, indices, 1, 2)
	}
}
