package coordinator

import (
	"math"
	"testing"
	"time"

	"github.com/nice-flow/nice/train"
)

// etaRun feeds a stepClock commits as the server's loop sees them.
type etaRun struct {
	c         stepClock
	committed int64
	at        time.Time
	next      train.Position
	gen       uint64
	ring      int
	spe       int
}

// newETARun starts as the server can: its status is updated while the
// first generation runs and before its first commit (no commit time yet).
func newETARun(spe int) *etaRun {
	r := &etaRun{at: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), gen: 1, ring: 2, spe: spe}
	r.c.observe(0, time.Time{}, r.next, r.gen, r.ring)
	return r
}

// commit commits one step that took d.
func (r *etaRun) commit(d time.Duration) {
	r.at = r.at.Add(d)
	r.committed++
	r.next = r.next.Next(r.spe)
	r.c.observe(r.committed, r.at, r.next, r.gen, r.ring)
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestETA(t *testing.T) {
	const spe, epochs = 10, 3 // 30 steps
	tests := []struct {
		name string
		run  func(r *etaRun) (now time.Time, scored int)
		want float64
		per  float64 // the step time expected
	}{
		{"unknown before any commit", func(r *etaRun) (time.Time, int) { return r.at, 0 }, 0, 0},
		{"unknown after the first commit", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			return r.at, 0
		}, 0, 0},
		{"steady: the steps left at the mean step time", func(r *etaRun) (time.Time, int) {
			for _, d := range []time.Duration{time.Second, 1500 * time.Millisecond, 500 * time.Millisecond, time.Second} {
				r.commit(d)
			}
			return r.at, 0 // 4 steps done; 3 intervals of 3 s in all
		}, 26, 1},
		{"a generation's restart does not count", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			r.commit(time.Second)
			r.gen++
			r.commit(time.Minute) // the pause: another generation's first commit
			r.commit(time.Second)
			return r.at, 0 // 4 done
		}, 26, 1},
		{"a jump to a checkpoint does not count", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			r.commit(time.Second)
			r.next = train.Position{Step: 20, Epoch: 2}
			r.commit(time.Minute)
			return r.at, 2 // 21 done
		}, 9, 1},
		{"another ring size starts the mean afresh", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			r.commit(time.Second)
			r.gen++
			r.ring = 1
			r.commit(time.Minute)
			r.commit(2 * time.Second)
			return r.at, 0 // 4 done at 2 s a step
		}, 52, 2},
		{"an epoch's scoring is counted for every epoch not scored", func(r *etaRun) (time.Time, int) {
			for range 10 {
				r.commit(time.Second) // epoch 1 ends at the tenth
			}
			r.commit(6 * time.Second) // one step and 5 s of scoring
			r.commit(time.Second)
			return r.at, 1 // 12 done; epochs 2 and 3 to score
		}, 18 + 2*5, 1},
		{"the time since the newest commit counts down, up to a step", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			r.commit(2 * time.Second)
			return r.at.Add(1500 * time.Millisecond), 0 // 2 done, 2 s a step
		}, 28*2 - 1.5, 2},
		{"a long silence counts as one step at most", func(r *etaRun) (time.Time, int) {
			r.commit(time.Second)
			r.commit(2 * time.Second)
			return r.at.Add(time.Hour), 0
		}, 28*2 - 2, 2},
		{"nothing left once every epoch is trained and scored", func(r *etaRun) (time.Time, int) {
			for range 30 {
				r.commit(time.Second)
			}
			return r.at, 3
		}, 0, 1},
		{"only the scoring left after the last step", func(r *etaRun) (time.Time, int) {
			for i := range 30 {
				d := time.Second
				if i == 10 || i == 20 {
					d = 4 * time.Second // 3 s of scoring
				}
				r.commit(d)
			}
			return r.at.Add(time.Minute), 2
		}, 3, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newETARun(spe)
			now, scored := tc.run(r)
			if got := r.c.eta(now, spe, epochs, scored); !near(got, tc.want) {
				t.Errorf("eta %v s, want %v s (step time %v s)", got, tc.want, r.c.secondsPerStep())
			}
			if got := r.c.secondsPerStep(); !near(got, tc.per) {
				t.Errorf("step time %v s, want %v s", got, tc.per)
			}
		})
	}
}

// The mean follows the newest etaWindow intervals only.
func TestETAWindowForgetsOldSteps(t *testing.T) {
	r := newETARun(1000)
	for range 10 {
		r.commit(10 * time.Second)
	}
	for range etaWindow {
		r.commit(time.Second)
	}
	if got := r.c.secondsPerStep(); !near(got, 1) {
		t.Fatalf("step time %v s after %d steps of 1 s, want 1 s", got, etaWindow)
	}
}

// A status copy carries the clock by value: updating the server's does not
// change a copy handed out before.
func TestETAClockIsCopiedByValue(t *testing.T) {
	r := newETARun(100)
	r.commit(time.Second)
	r.commit(time.Second)
	st := Status{clock: r.c}
	r.commit(3 * time.Second)
	if got := st.clock.secondsPerStep(); !near(got, 1) {
		t.Fatalf("a copied clock changed to %v s a step", got)
	}
}
