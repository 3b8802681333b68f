package train

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/nice-flow/nice/flow"
)

// MaskKind names which pixels of an image inpainting treats as missing.
type MaskKind string

// The masks of the paper's inpainting experiments (section 5.2), and more.
const (
	MaskLeft   MaskKind = "left"   // the left half of the columns
	MaskRight  MaskKind = "right"  // the right half of the columns
	MaskTop    MaskKind = "top"    // the top half of the rows
	MaskBottom MaskKind = "bottom" // the bottom half of the rows
	MaskRandom MaskKind = "random" // each pixel independently, with probability Fraction
	MaskSquare MaskKind = "square" // a centred square of Side pixels
)

// MaskKinds lists every mask, in the order help texts show them.
var MaskKinds = []MaskKind{MaskLeft, MaskRight, MaskTop, MaskBottom, MaskRandom, MaskSquare}

// Mask describes the missing pixels of square images.
type Mask struct {
	Kind MaskKind
	// Fraction is the probability that a pixel is missing (MaskRandom).
	Fraction float64
	// Side is the side of the missing square in pixels (MaskSquare).
	Side int
}

// Validate says what is wrong with k for images of width x width pixels.
func (k Mask) Validate(width int) error {
	switch k.Kind {
	case MaskLeft, MaskRight, MaskTop, MaskBottom:
	case MaskRandom:
		if !(k.Fraction > 0 && k.Fraction < 1) {
			return fmt.Errorf("random mask: the fraction of missing pixels %v must lie strictly between 0 and 1", k.Fraction)
		}
	case MaskSquare:
		if k.Side < 1 || k.Side > width {
			return fmt.Errorf("square mask: side %d must lie between 1 and the image width %d", k.Side, width)
		}
	default:
		names := make([]string, len(MaskKinds))
		for i, m := range MaskKinds {
			names[i] = string(m)
		}
		return fmt.Errorf("mask %q: use one of %s", k.Kind, strings.Join(names, ", "))
	}
	return nil
}

// Missing returns, for n images of width x width pixels, which pixels are
// missing (n x width², true where missing). The random mask draws each
// image's pixels from rng; the others are the same for every image.
func (k Mask) Missing(n, width int, rng *rand.Rand) ([]bool, error) {
	if err := k.Validate(width); err != nil {
		return nil, err
	}
	D := width * width
	out := make([]bool, n*D)
	lo := (width - k.Side) / 2
	for i := 0; i < n; i++ {
		img := out[i*D : (i+1)*D]
		for r := 0; r < width; r++ {
			for c := 0; c < width; c++ {
				var miss bool
				switch k.Kind {
				case MaskLeft:
					miss = c < width/2
				case MaskRight:
					miss = c >= width/2
				case MaskTop:
					miss = r < width/2
				case MaskBottom:
					miss = r >= width/2
				case MaskRandom:
					miss = rng.Float64() < k.Fraction
				case MaskSquare:
					miss = r >= lo && r < lo+k.Side && c >= lo && c < lo+k.Side
				}
				img[r*width+c] = miss
			}
		}
	}
	return out, nil
}

// InpaintConfig tunes Inpaint.
type InpaintConfig struct {
	// Steps is the number of gradient steps.
	Steps int
	// LR is the first step's size: a step adds LR times d log p(x)/dx to
	// every missing pixel of an image, then clamps it to [0, 1]. From there
	// each image adapts its own step size: a step that raised the image's
	// log-likelihood is kept and the next one is StepGrow times larger; a
	// step that lowered it is undone and the size halved. So the result's
	// log-likelihood is never below the start's, and one LR serves a soft
	// model (which wants large steps) and a sharp one (whose background
	// pixels sit in narrow peaks that a large step jumps across).
	LR float64
	// Seed draws the uniform noise the missing pixels start from.
	Seed uint64
	// Normalise divides each pixel's gradient by the root mean square of
	// that pixel's gradients so far (an average over about the last 100
	// accepted points, as RMSProp does), so a step moves every missing
	// pixel by about LR whatever its gradient's size: LR is then in pixel
	// values. Without it a trained model's background pixels, whose
	// gradients are hundreds of times the strokes', set the step for all.
	Normalise bool
}

// rmsDecay is how much of a pixel's mean square gradient Normalise keeps at
// each accepted point; rmsEps keeps its division finite.
const (
	rmsDecay = 0.99
	rmsEps   = 1e-8
)

// StepGrow is how much an image's inpainting step grows after a step that
// raised its log-likelihood; a step that lowered it halves it.
const StepGrow = 1.1

// Validate says what is wrong with c.
func (c InpaintConfig) Validate() error {
	if c.Steps < 0 {
		return fmt.Errorf("inpainting steps %d: must be at least 0", c.Steps)
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		return fmt.Errorf("inpainting step size %v: must be a positive number", c.LR)
	}
	return nil
}

// InpaintResult is what Inpaint achieved: per image, log p(x) in nats of
// the masked start and of the result, and its step size at the end; and the
// mean log-likelihood over the images before each step, the result's last
// (Steps+1 entries, never falling).
type InpaintResult struct {
	Start, Final []float64
	StepSize     []float64
	Trace        []float64
}

// Inpaint fills the missing pixels of the n images of x (n x Dim, natural
// pixel order, values in [0, 1]; missing as Mask.Missing returns) by
// projected gradient ascent on the model's log-likelihood over the missing
// pixels only, as in the NICE paper's section 5.2: the observed pixels stay
// as they are; the missing ones start from uniform noise (so x then holds
// the masked start, which the caller may copy first) and after each step
// are clamped to the data range [0, 1]. Each image's step size adapts (see
// InpaintConfig.LR), and x ends at the best point each image reached. x is
// updated in place, in batches of ws.Max images.
func Inpaint(m *flow.Model, ws *flow.Workspace, x []float32, missing []bool, n int, c InpaintConfig) (InpaintResult, error) {
	D := m.Config.Dim
	if err := c.Validate(); err != nil {
		return InpaintResult{}, err
	}
	if len(x) < n*D || len(missing) < n*D {
		return InpaintResult{}, fmt.Errorf("inpainting %d images of %d pixels: %d values and %d mask entries", n, D, len(x), len(missing))
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x696e7061)) // "inpa"
	for i := range x[:n*D] {
		if missing[i] {
			x[i] = float32(rng.Float64())
		}
	}
	res := InpaintResult{Start: make([]float64, n), Final: make([]float64, n), StepSize: make([]float64, n)}
	// The last accepted point of each image of a batch, its gradient and
	// its log-likelihood; x holds the point being tried.
	best := make([]float32, ws.Max*D)
	bestG := make([]float32, ws.Max*D)
	bestLL := make([]float64, ws.Max)
	g := make([]float32, ws.Max*D)
	var ms []float64 // each pixel's mean square gradient (Normalise)
	if c.Normalise {
		ms = make([]float64, ws.Max*D)
	}
	ll := make([]float64, ws.Max)
	sums := make([]float64, c.Steps+1)
	for lo := 0; lo < n; lo += ws.Max {
		b := min(ws.Max, n-lo)
		xb, mb, gb := x[lo*D:(lo+b)*D], missing[lo*D:(lo+b)*D], g[:b*D]
		step := res.StepSize[lo : lo+b]
		for i := range step {
			step[i] = c.LR
		}
		// accept keeps each image's trial point when it is no worse than
		// its best (the first always is), and otherwise goes back to the
		// best with half the step.
		accept := func(first bool) {
			for i := range b {
				xi, bi := xb[i*D:(i+1)*D], best[i*D:(i+1)*D]
				gi, bgi := gb[i*D:(i+1)*D], bestG[i*D:(i+1)*D]
				if first || ll[i] >= bestLL[i] {
					copy(bi, xi)
					copy(bgi, gi)
					bestLL[i] = ll[i]
					if ms != nil {
						foldSquares(ms[i*D:(i+1)*D], gi, first)
					}
					if !first {
						step[i] *= StepGrow
					}
					continue
				}
				copy(xi, bi)
				copy(gi, bgi)
				step[i] /= 2
			}
		}
		for s := 0; s < c.Steps; s++ {
			m.InputGradient(ws, xb, b, gb, ll)
			accept(s == 0)
			if s == 0 {
				copy(res.Start[lo:lo+b], ll[:b])
			}
			sums[s] += sumOf(bestLL[:b])
			for i := range b {
				for j := i * D; j < (i+1)*D; j++ {
					if mb[j] {
						d := float64(gb[j])
						if ms != nil {
							d /= math.Sqrt(ms[j]) + rmsEps
						}
						v := float64(xb[j]) + step[i]*d
						xb[j] = float32(min(max(v, 0), 1))
					}
				}
			}
		}
		m.LogLikelihood(ws, xb, b, ll)
		if c.Steps == 0 {
			copy(res.Start[lo:lo+b], ll[:b])
		} else {
			// The last trial: kept if no worse, else the best goes back
			// (its gradient is not needed again).
			accept(false)
			copy(ll[:b], bestLL[:b])
		}
		sums[c.Steps] += sumOf(ll[:b])
		copy(res.Final[lo:lo+b], ll[:b])
	}
	res.Trace = make([]float64, len(sums))
	for s, v := range sums {
		res.Trace[s] = v / float64(max(n, 1))
	}
	return res, nil
}

// foldSquares folds the squares of g into the running mean squares ms; the
// first gradient sets them.
func foldSquares(ms []float64, g []float32, first bool) {
	for j, x := range g {
		sq := float64(x) * float64(x)
		if first {
			ms[j] = sq
		} else {
			ms[j] = rmsDecay*ms[j] + (1-rmsDecay)*sq
		}
	}
}

func sumOf(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s
}

// MaskedMSE is the mean squared difference between a and b over the
// missing pixels (0 when none is missing).
func MaskedMSE(a, b []float32, missing []bool) float64 {
	var sum float64
	var k int
	for i, miss := range missing {
		if miss {
			d := float64(a[i]) - float64(b[i])
			sum += d * d
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return sum / float64(k)
}

// Mean is the mean of v (0 for none).
func Mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
