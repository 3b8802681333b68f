package ring

// layout splits a buffer of total floats over n members: chunk i has
// total/n floats, and the first total%n chunks one more.
type layout struct {
	total, n  int
	base, rem int
}

func newLayout(total, n int) layout {
	return layout{total: total, n: n, base: total / n, rem: total % n}
}

// chunk returns the start and length of chunk i.
func (l layout) chunk(i int) (start, length int) {
	length = l.base
	if i < l.rem {
		length++
	}
	return i*l.base + min(i, l.rem), length
}

// frames is the number of frames of at most f floats in chunk i.
func (l layout) frames(i, f int) int {
	_, n := l.chunk(i)
	return (n + f - 1) / f
}

// steps is the number of steps of a collective: N-1 of reduce-scatter then
// N-1 of all-gather.
func (l layout) steps() int { return 2 * (l.n - 1) }

// sendChunk is the chunk that rank sends in step s. In reduce-scatter step
// s it sends chunk rank-s; in all-gather step s' = s-(N-1) it sends chunk
// rank+1-s'. In both, the chunk sent in step s is the one received in step
// s-1, which is what lets frames flow through the steps as a pipeline.
func (l layout) sendChunk(rank, s int) int {
	if s < l.n-1 {
		return mod(rank-s, l.n)
	}
	return mod(rank+1-(s-(l.n-1)), l.n)
}

// recvChunk is the chunk that rank receives in step s.
func (l layout) recvChunk(rank, s int) int {
	if s < l.n-1 {
		return mod(rank-s-1, l.n)
	}
	return mod(rank-(s-(l.n-1)), l.n)
}

func mod(a, n int) int {
	a %= n
	if a < 0 {
		a += n
	}
	return a
}
