package coordinator

import (
	"time"

	"github.com/nice-flow/nice/train"
)

// etaWindow is how many recent commit intervals the step time is averaged
// over: long enough to smooth one slow step, short enough to follow a
// change of speed within a minute of training.
const etaWindow = 32

// stepClock estimates the time a step takes, and the extra time an epoch's
// end takes (its scoring), from the commits of steady training. An interval
// between two commits counts only when both commits belong to the same
// generation of the same ring size: the pause while a generation restarts
// (a worker lost or joining, a state fetched) is not training speed, and a
// ring of another size trains at another speed. An interval that starts at
// an epoch's end holds that epoch's scoring and is kept apart.
//
// It is a value with no pointers (Status copies it); the loop goroutine
// alone updates it.
type stepClock struct {
	seen      bool
	committed int64 // the machine's commit count at the newest commit seen
	at        time.Time
	next      train.Position
	gen       uint64
	ring      int

	steps   [etaWindow]int64   // steps of each kept interval
	seconds [etaWindow]float64 // and their duration
	n, head int

	scoring float64 // smoothed seconds an epoch's end adds; 0 while unknown
}

// observe takes the machine's view after an event: committed commits in
// all, the newest at time at, leading to next, in generation gen with a
// ring of ring members.
func (c *stepClock) observe(committed int64, at time.Time, next train.Position, gen uint64, ring int) {
	if c.seen && committed == c.committed {
		return
	}
	prev := *c
	c.seen, c.committed, c.at, c.next, c.gen, c.ring = true, committed, at, next, gen, ring
	if !prev.seen || prev.at.IsZero() {
		return // no commit before this one to measure from
	}
	if ring != prev.ring {
		c.n, c.head = 0, 0 // another ring, another speed
	}
	steps := next.Step - prev.next.Step
	sec := at.Sub(prev.at).Seconds()
	if gen != prev.gen || steps <= 0 || sec <= 0 || committed-prev.committed != steps {
		return // a restart, a jump to a checkpoint, or commits not seen one by one
	}
	if prev.next.StepInEpoch == 0 && prev.next.Step > 0 {
		// The interval began at an epoch's end: one step and the scoring.
		if per := c.secondsPerStep(); per > 0 {
			extra := max(0, sec-float64(steps)*per)
			if c.scoring == 0 {
				c.scoring = extra
			} else {
				c.scoring = 0.5*c.scoring + 0.5*extra
			}
		}
		return
	}
	c.steps[c.head], c.seconds[c.head] = steps, sec
	c.head = (c.head + 1) % etaWindow
	c.n = min(c.n+1, etaWindow)
}

// secondsPerStep is the mean step time over the kept intervals, 0 while
// none is kept.
func (c *stepClock) secondsPerStep() float64 {
	var steps int64
	var sec float64
	for i := range c.n {
		steps += c.steps[i]
		sec += c.seconds[i]
	}
	if steps == 0 {
		return 0
	}
	return sec / float64(steps)
}

// eta is the time, from now, until every one of epochs epochs of
// stepsPerEpoch steps is trained and scored, at the recent speed; scored
// says how many of those epochs already have their score. 0 when unknown
// (no interval of steady training seen yet) and when nothing is left. The
// time since the newest commit counts as spent on the next step, up to one
// step's time, so that the figure counts down between commits without
// claiming more than it knows.
func (c *stepClock) eta(now time.Time, stepsPerEpoch, epochs, scored int) float64 {
	per := c.secondsPerStep()
	if per == 0 || stepsPerEpoch <= 0 || epochs <= 0 {
		return 0
	}
	left := int64(epochs)*int64(stepsPerEpoch) - c.next.Step
	var sec float64
	if left > 0 {
		sec = float64(left)*per - min(max(0, now.Sub(c.at).Seconds()), per)
	}
	if unscored := epochs - scored; unscored > 0 {
		sec += float64(unscored) * c.scoring
	}
	return max(0, sec)
}
