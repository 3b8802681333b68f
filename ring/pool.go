package ring

import (
	"math/bits"
	"sync"
)

// recyclingPool is the mem.BufferPool of ring streams: buffers in size
// classes of powers of two, handed out again without being zeroed.
var recyclingPool = newSizeClassPool()

const (
	minClass = 8  // 256 B
	maxClass = 23 // 8 MiB
)

type sizeClassPool struct {
	classes [maxClass + 1]sync.Pool
}

func newSizeClassPool() *sizeClassPool { return &sizeClassPool{} }

func classOf(size int) int {
	if size <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(size - 1))
}

func (p *sizeClassPool) Get(size int) *[]byte {
	c := classOf(size)
	if c > maxClass {
		b := make([]byte, size)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<c)
	return &b
}

func (p *sizeClassPool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minClass || c > 1<<maxClass || c&(c-1) != 0 {
		return // not one of ours
	}
	p.classes[bits.Len(uint(c))-1].Put(b)
}
