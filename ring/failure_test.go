package ring

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// detectWithin bounds how long a dead or stalled neighbour takes to end
// every member's collective. failCfg's deadlines promise about 1-2 s (a 1 s
// frame deadline, then the break spreading round the ring); the bound is
// ten times that, so that a member that never notices fails the test but a
// loaded machine (2 s measured under -race at load 15) does not.
const detectWithin = 20 * time.Second

// failCfg has small frames, so that a collective of a few million floats is
// a long train of frames to break, and a 1 s frame deadline instead of the
// default 4 s: the tests check how a break is noticed and spreads, which
// the floor only scales, and they stall members on purpose many times.
func failCfg() Config {
	cfg := DefaultConfig()
	cfg.FrameBytes = 64 << 10
	cfg.FrameTimeoutFloor = time.Second
	return cfg
}

// afterFrames returns a fault that lets frames through until member victim
// sent n of them in generation 1, then calls trigger once (on its own
// goroutine) and applies act to every later frame of victim.
func afterFrames(victim string, n int64, act FaultAction, trigger func()) FrameFault {
	var sent atomic.Int64
	var once sync.Once
	return func(id StreamID, h *FrameHeader, data []float32) (FaultAction, []float32) {
		if id.From.ID != victim || h.Generation != 1 {
			return Deliver, data
		}
		if sent.Add(1) <= n {
			return Deliver, data
		}
		once.Do(func() { go trigger() })
		return act, data
	}
}

func TestKilledMemberBreaksRing(t *testing.T) {
	for _, tr := range transports {
		for _, n := range []int{2, 3, 5} {
			t.Run(fmt.Sprintf("%s/N=%d", tr.name, n), func(t *testing.T) {
				verifyNoLeaks(t)
				victim := n / 2
				var c *testCluster
				killed := make(chan time.Time, 1)
				fault := afterFrames(fmt.Sprintf("w%d", victim), 40, Deliver, func() {
					c.kill(victim)
					killed <- time.Now()
				})
				c = tr.make(t, n, failCfg(), fault)
				c.configure(1)
				bufs := makeBufs(n, killFloats())
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				errs, done := c.allReduceTimed(ctx, bufs)
				at := <-killed
				for i, err := range errs {
					if i == victim {
						continue
					}
					if !errors.Is(err, ErrRingBroken) {
						t.Errorf("member %d: got %v, want ErrRingBroken", i, err)
						continue
					}
					var be *BrokenError
					if !errors.As(err, &be) || (be.Dir != Local && !strings.Contains(err.Error(), "rank")) {
						t.Errorf("member %d: error does not name the peer: %v", i, err)
					}
					if d := done[i].Sub(at); d > detectWithin {
						t.Errorf("member %d noticed the kill after %v: %v", i, d, err)
					}
					t.Logf("member %d after %v: %v", i, done[i].Sub(at).Round(time.Millisecond), err)
				}
			})
		}
	}
}

func TestStalledMemberBreaksRing(t *testing.T) {
	for _, tr := range transports {
		for _, n := range []int{2, 4} {
			t.Run(fmt.Sprintf("%s/N=%d", tr.name, n), func(t *testing.T) {
				verifyNoLeaks(t)
				stalled := make(chan time.Time, 1)
				// Member 1 keeps its streams open but stops sending.
				fault := afterFrames("w1", 20, Drop, func() { stalled <- time.Now() })
				c := tr.make(t, n, failCfg(), fault)
				c.configure(1)
				bufs := makeBufs(n, killFloats())
				errs, done := c.allReduceTimed(context.Background(), bufs)
				at := <-stalled
				for i, err := range errs {
					if !errors.Is(err, ErrRingBroken) {
						t.Errorf("member %d: got %v, want ErrRingBroken", i, err)
						continue
					}
					// The stall is seen by the deadline of the next frame
					// after the last one that arrived.
					if d := done[i].Sub(at); d > detectWithin {
						t.Errorf("member %d noticed the stall after %v: %v", i, d, err)
					}
					t.Logf("member %d after %v: %v", i, done[i].Sub(at).Round(time.Millisecond), err)
				}
			})
		}
	}
}

func TestBadFramesAreRefused(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(h *FrameHeader, data []float32) []float32
		kind   error
		says   string
	}{
		{"stale generation", func(h *FrameHeader, d []float32) []float32 { h.Generation--; return d }, ErrStaleGeneration, "wrong generation"},
		{"future generation", func(h *FrameHeader, d []float32) []float32 { h.Generation++; return d }, ErrBadFrame, "wrong generation"},
		{"wrong chunk", func(h *FrameHeader, d []float32) []float32 { h.Chunk++; return d }, ErrBadFrame, "wrong chunk"},
		{"short frame", func(h *FrameHeader, d []float32) []float32 { return d[:len(d)-1] }, ErrBadFrame, "wrong length"},
		{"long frame", func(h *FrameHeader, d []float32) []float32 { return append(d[:len(d):len(d)], 1) }, ErrBadFrame, "wrong length"},
		{"wrong step", func(h *FrameHeader, d []float32) []float32 { h.Step++; return d }, ErrBadFrame, "wrong step"},
		{"wrong offset", func(h *FrameHeader, d []float32) []float32 { h.Offset += 4; return d }, ErrBadFrame, "wrong offset"},
		{"wrong collective", func(h *FrameHeader, d []float32) []float32 { h.Seq++; return d }, ErrBadFrame, "wrong collective"},
		{"wrong total", func(h *FrameHeader, d []float32) []float32 { h.Total--; return d }, ErrBadFrame, "wrong total length"},
	}
	for _, tr := range transports {
		for _, tc := range cases {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				verifyNoLeaks(t)
				const n = 3
				// Member 0 corrupts its 3rd frame of generation 1, in step 1.
				var sent atomic.Int64
				fault := func(id StreamID, h *FrameHeader, data []float32) (FaultAction, []float32) {
					if id.From.ID == "w0" && h.Generation == 1 && sent.Add(1) == 3 {
						return Deliver, tc.mutate(h, data)
					}
					return Deliver, data
				}
				c := tr.make(t, n, failCfg(), fault)
				c.configure(1)
				bufs := makeBufs(n, 100_000)
				errs, _ := c.allReduce(context.Background(), bufs)
				// Member 1 receives from member 0 and must say what was wrong.
				if !errors.Is(errs[1], tc.kind) || !errors.Is(errs[1], ErrRingBroken) || !strings.Contains(errs[1].Error(), tc.says) {
					t.Errorf("receiver: got %v, want %v saying %q", errs[1], tc.kind, tc.says)
				}
				for i, err := range errs {
					if !errors.Is(err, ErrRingBroken) {
						t.Errorf("member %d: got %v, want ErrRingBroken", i, err)
					}
				}
				t.Logf("receiver: %v", errs[1])
				// The next generation completes.
				c.configure(2)
				sum, mag := inputs(bufs, 7)
				c.mustAllReduce(bufs)
				checkSum(t, bufs, sum, mag)
			})
		}
	}
}

// A member still in an older generation cannot open a stream to one that
// moved on: the dialer is told its generation is stale.
func TestStaleStreamRefused(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			verifyNoLeaks(t)
			c := tr.make(t, 2, failCfg(), nil)
			c.configure(1)
			bufs := makeBufs(2, 1000)
			c.mustAllReduce(bufs)
			// Member 1 moves to generation 2 and waits for its left
			// neighbour, member 0, which is still in generation 1.
			if err := c.members[1].Configure(2, 1, c.peers); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			// (The refusal depends on member 1's generation only, set by
			// Configure above, not on how far its collective has got.)
			wg.Go(func() { c.members[1].AllReduce(ctx, bufs[1]) })
			old := StreamID{Generation: 1, From: c.peers[0], FromRank: 0, To: c.peers[1], RingSize: 2}
			_, err := c.members[0].tr.Dial(ctx, old)
			if !errors.Is(err, ErrStaleGeneration) {
				t.Errorf("dialing with generation 1: got %v, want ErrStaleGeneration", err)
			}
			t.Logf("refused: %v", err)
			cancel()
			wg.Wait()
			// Configuring backwards is refused too.
			if err := c.members[1].Configure(1, 1, c.peers); !errors.Is(err, ErrStaleGeneration) {
				t.Errorf("Configure(1) after 2: got %v", err)
			}
			// Both move to generation 3 and the ring works again.
			c.configure(3)
			sum, mag := inputs(bufs, 3)
			c.mustAllReduce(bufs)
			checkSum(t, bufs, sum, mag)
		})
	}
}

func TestCancelledContextBreaksRing(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			verifyNoLeaks(t)
			const n = 3
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			fault := afterFrames("w2", 10, Deliver, cancel)
			c := tr.make(t, n, failCfg(), fault)
			c.configure(1)
			bufs := makeBufs(n, killFloats())
			// Only member 2 runs under ctx.
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i, m := range c.members {
				wg.Go(func() {
					mctx := context.Background()
					if i == 2 {
						mctx = ctx
					}
					errs[i] = m.AllReduce(mctx, bufs[i])
				})
			}
			wg.Wait()
			if !errors.Is(errs[2], context.Canceled) || !errors.Is(errs[2], ErrRingBroken) {
				t.Errorf("cancelled member: got %v", errs[2])
			}
			for i, err := range errs {
				if !errors.Is(err, ErrRingBroken) {
					t.Errorf("member %d: got %v", i, err)
				}
			}
			// The generation stays broken; the next one works.
			if err := c.members[0].AllReduce(context.Background(), bufs[0]); !errors.Is(err, ErrRingBroken) {
				t.Errorf("all-reduce on a broken generation: got %v", err)
			}
			c.configure(2)
			c.mustAllReduce(bufs)
		})
	}
}

// allReduceTimed is allReduce that also records when each member returned.
func (c *testCluster) allReduceTimed(ctx context.Context, bufs [][]float32) ([]error, []time.Time) {
	errs := make([]error, len(c.members))
	done := make([]time.Time, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() {
			errs[i] = m.AllReduce(ctx, bufs[i])
			done[i] = time.Now()
		})
	}
	wg.Wait()
	return errs, done
}
