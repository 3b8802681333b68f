package plot

import (
	"math"
	"strconv"
)

// axis is a linear scale from data values [lo, hi] to pixels [p0, p1], with
// tick marks at multiples of step.
type axis struct {
	lo, hi, step float64
	p0, p1       float64
}

// newAxis makes a scale covering [min, max] plus a 5% margin on each side,
// so no point sits on the frame, with ticks at round values (1, 2 or 5 times
// a power of ten, four to ten of them). A degenerate range (a single value)
// is widened around that value; an empty one (min > max) becomes [0, 1].
func newAxis(min, max float64) axis {
	if min > max {
		min, max = 0, 1
	}
	if span := max - min; span <= 1e-12*math.Max(1, math.Max(math.Abs(min), math.Abs(max))) {
		pad := math.Abs(min) * 0.1
		if pad == 0 {
			pad = 1
		}
		min, max = min-pad, max+pad
	}
	margin := (max - min) * 0.05
	min, max = min-margin, max+margin
	return axis{lo: min, hi: max, step: roundStep((max - min) / 6)}
}

// roundStep is the smallest of 1, 2 or 5 times a power of ten that is at
// least raw.
func roundStep(raw float64) float64 {
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// ticks returns the multiples of step within [lo, hi] (or [hi, lo], for a
// scale that runs the other way).
func (a axis) ticks() []float64 {
	lo, hi := min(a.lo, a.hi), max(a.lo, a.hi)
	first := math.Ceil(lo/a.step - 1e-9)
	n := int(math.Floor(hi/a.step+1e-9) - first)
	ts := make([]float64, 0, n+1)
	for i := 0; i <= n; i++ {
		ts = append(ts, (first+float64(i))*a.step)
	}
	return ts
}

// pixel maps a data value to its pixel coordinate.
func (a axis) pixel(v float64) float64 {
	return a.p0 + (v-a.lo)/(a.hi-a.lo)*(a.p1-a.p0)
}

// label formats a tick value with just the decimals its step needs.
func (a axis) label(v float64) string {
	if math.Abs(v) < a.step*1e-9 {
		v = 0 // not "-0" or "1e-17"
	}
	if math.Abs(v) >= 1e7 || a.step < 1e-5 {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	decimals := 0
	if d := -math.Floor(math.Log10(a.step) + 1e-9); d > 0 {
		decimals = int(d)
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}
