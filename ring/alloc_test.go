package ring

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// ringDriver runs every member's AllReduce on its own long-lived goroutine,
// so that the allocations counted are those of the collective alone.
type ringDriver struct {
	start []chan struct{}
	done  chan error
	wg    sync.WaitGroup
}

func newRingDriver(c *testCluster, bufs [][]float32) *ringDriver {
	d := &ringDriver{done: make(chan error, len(c.members))}
	for i, m := range c.members {
		ch := make(chan struct{})
		d.start = append(d.start, ch)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			ctx := context.Background()
			for range ch {
				d.done <- m.AllReduce(ctx, bufs[i])
			}
		}()
	}
	return d
}

func (d *ringDriver) run() error {
	for _, ch := range d.start {
		ch <- struct{}{}
	}
	var first error
	for range d.start {
		if err := <-d.done; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (d *ringDriver) stop() {
	for _, ch := range d.start {
		close(ch)
	}
	d.wg.Wait()
}

// Once warm, an all-reduce over the in-memory transport allocates nothing:
// frames, timers, goroutines and channels are all reused.
func TestAllReduceAllocatesNothingWhenWarm(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			verifyNoLeaks(t)
			c := newInmemCluster(t, n, DefaultConfig(), nil)
			c.configure(1)
			bufs := makeBufs(n, 1_000_003)
			d := newRingDriver(c, bufs)
			defer d.stop()
			var err error
			// AllocsPerRun counts the whole process and floors the mean: over
			// 20 collectives, a stray allocation of the runtime (a timer, a
			// scheduler structure on a loaded machine) does not count, while
			// one allocation per collective still does.
			allocs := testing.AllocsPerRun(20, func() {
				if e := d.run(); e != nil {
					err = e
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if allocs != 0 {
				t.Errorf("%v allocations per all-reduce of the whole ring, want 0", allocs)
			}
		})
	}
}

// BenchmarkAllReduce reports the time of one all-reduce of the ring, its
// algbw as bytes/s (SetBytes) and busbw, and the allocations of all members.
func BenchmarkAllReduce(b *testing.B) {
	for _, tr := range transports {
		for _, n := range []int{2, 4} {
			for _, p := range []int{1 << 20, modelFloats} {
				b.Run(fmt.Sprintf("%s/N=%d/P=%d", tr.name, n, p), func(b *testing.B) {
					c := tr.make(b, n, DefaultConfig(), nil)
					c.configure(1)
					bufs := makeBufs(n, p)
					d := newRingDriver(c, bufs)
					defer d.stop()
					if err := d.run(); err != nil {
						b.Fatal(err)
					}
					b.SetBytes(int64(4 * p))
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						if err := d.run(); err != nil {
							b.Fatal(err)
						}
					}
					sec := b.Elapsed().Seconds() / float64(b.N)
					b.ReportMetric(float64(4*p)/sec/1e9*2*float64(n-1)/float64(n), "busbw_GB/s")
				})
			}
		}
	}
}
