package flow

import (
	"runtime"
	"sync"
)

// pool runs the parts of data-parallel loops on GOMAXPROCS goroutines that live
// for the life of the process, so a training step starts none.
type pool struct {
	mu   sync.Mutex // one loop at a time
	fn   func(int)
	next chan int
	wg   sync.WaitGroup
	n    int
}

var (
	poolOnce sync.Once
	shared   *pool
)

func defaultPool() *pool {
	poolOnce.Do(func() {
		shared = &pool{next: make(chan int, adamChunks), n: runtime.GOMAXPROCS(0)}
		for i := 0; i < shared.n; i++ {
			go shared.worker()
		}
	})
	return shared
}

func (p *pool) worker() {
	for i := range p.next {
		p.fn(i)
		p.wg.Done()
	}
}

// run calls fn(i) for i in [0, parts) on the pool and returns when all are done.
func (p *pool) run(parts int, fn func(int)) {
	if p.n <= 1 {
		for i := 0; i < parts; i++ {
			fn(i)
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fn = fn
	p.wg.Add(parts)
	for i := 0; i < parts; i++ {
		p.next <- i
	}
	p.wg.Wait()
	p.fn = nil
}
