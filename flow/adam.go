package flow

import (
	"errors"
	"fmt"
	"math"

	"github.com/nice-flow/nice/flow/internal/vec"
	"github.com/nice-flow/nice/internal/f32"
)

// AdamConfig holds the optimiser's settings.
type AdamConfig struct {
	LR    float64 `json:"lr"`
	Beta1 float64 `json:"beta1"`
	Beta2 float64 `json:"beta2"`
	Eps   float64 `json:"eps"`
	// ClipNorm, when positive, rescales the mean gradient to at most this
	// global L2 norm before the update.
	ClipNorm float64 `json:"clip_norm"`
	// ScaleLR, when positive, is the learning rate of the parameters from
	// Adam.TailFrom on (the model's log-scales) instead of LR.
	ScaleLR float64 `json:"scale_lr,omitempty"`
	// WeightDecay, when positive, shrinks the parameters before
	// Adam.TailFrom (the couplings' weights and biases; never the
	// log-scales) by lr·WeightDecay each update, lr the scheduled learning
	// rate, apart from the gradient's step (decoupled, as AdamW).
	WeightDecay float64 `json:"weight_decay,omitempty"`
}

// DefaultAdam is the paper's setting: lr 1e-3, beta1 0.9, beta2 0.99 (in
// today's convention), eps 1e-4, no clipping.
func DefaultAdam() AdamConfig {
	return AdamConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.99, Eps: 1e-4}
}

// Validate reports what is wrong with c, if anything.
func (c AdamConfig) Validate() error {
	var errs []error
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		errs = append(errs, fmt.Errorf("learning rate %v: must be positive", c.LR))
	}
	if !(c.Beta1 >= 0 && c.Beta1 < 1) {
		errs = append(errs, fmt.Errorf("beta1 %v: must be in [0,1)", c.Beta1))
	}
	if !(c.Beta2 >= 0 && c.Beta2 < 1) {
		errs = append(errs, fmt.Errorf("beta2 %v: must be in [0,1)", c.Beta2))
	}
	if !(c.Eps > 0) {
		errs = append(errs, fmt.Errorf("eps %v: must be positive", c.Eps))
	}
	if !(c.ScaleLR >= 0) || math.IsInf(c.ScaleLR, 0) {
		errs = append(errs, fmt.Errorf("scale learning rate %v: must be 0 (the learning rate) or positive", c.ScaleLR))
	}
	if !(c.WeightDecay >= 0) || c.WeightDecay*c.LR >= 1 {
		errs = append(errs, fmt.Errorf("weight decay %v: must be 0 (off) or positive, and below 1/lr", c.WeightDecay))
	}
	if !(c.ClipNorm >= 0) {
		errs = append(errs, fmt.Errorf("clip norm %v: must be 0 (off) or positive", c.ClipNorm))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid optimiser config: %w", errors.Join(errs...))
	}
	return nil
}

// ErrNonFinite is returned when a gradient holds NaN or ±Inf; the update is
// not applied.
var ErrNonFinite = errors.New("gradient is not finite")

// Adam is the optimiser's state: first and second moments laid out like the
// parameters, and the number of updates applied.
type Adam struct {
	Config AdamConfig
	M, V   []float32
	Step   int64
	// Rate multiplies both learning rates in the next updates (a schedule
	// sets it before each); NewAdam sets 1.
	Rate float64
	// TailFrom is where the parameters learning at Config.ScaleLR begin;
	// NewAdam sets the end (none do).
	TailFrom int
	pool     *pool

	// The current call's operands, read by the chunk functions below; bound
	// once so that an update allocates nothing.
	params, grad    []float32
	lr, tailLR      float32
	eps, sc, decay  float32
	parts           [adamChunks]float64
	crcs            [adamChunks]uint32
	normFn, applyFn func(int)
	checkFn         func(int)
}

// NewAdam returns zeroed optimiser state for n parameters.
func NewAdam(c AdamConfig, n int) *Adam {
	a := &Adam{Config: c, M: make([]float32, n), V: make([]float32, n), Rate: 1, TailFrom: n, pool: defaultPool()}
	a.normFn = a.normChunk
	a.applyFn = a.applyChunk
	a.checkFn = a.checkChunk
	return a
}

// adamChunks fixes how reductions are split, so their result does not depend on
// the number of threads.
const adamChunks = 64

// GradNorm returns the global L2 norm of g, summed in a fixed order.
func (a *Adam) GradNorm(g []float32) float64 {
	a.grad = g
	a.pool.run(adamChunks, a.normFn)
	a.grad = nil
	return a.partsNorm()
}

// partsNorm is the square root of the chunks' sums of squares, added in
// chunk order.
func (a *Adam) partsNorm() float64 {
	var s float64
	for _, p := range a.parts {
		s += p
	}
	return math.Sqrt(s)
}

func (a *Adam) normChunk(c int) {
	lo, hi := chunk(len(a.grad), adamChunks, c)
	a.parts[c] = vec.SumSquares(a.grad[lo:hi])
}

// GradNormDigest returns GradNorm(g) and f32.CRC(0, g) (what train.Digest
// gives) in one pass over g: each chunk's CRC is taken right
// after its sum of squares, while the chunk is still in cache, and on the
// pool's threads; the chunks' CRCs are then combined in order. A worker
// needs both of the reduced gradient before it reports a step, and the
// gradient is 77 MB: two passes over memory cost about twice this one.
func (a *Adam) GradNormDigest(g []float32) (float64, uint32) {
	a.grad = g
	a.pool.run(adamChunks, a.checkFn)
	a.grad = nil
	crc := a.crcs[0]
	for c := 1; c < adamChunks; c++ {
		lo, hi := chunk(len(g), adamChunks, c)
		crc = f32.CombineCRC(crc, a.crcs[c], 4*(hi-lo))
	}
	return a.partsNorm(), crc
}

func (a *Adam) checkChunk(c int) {
	lo, hi := chunk(len(a.grad), adamChunks, c)
	a.parts[c] = vec.SumSquares(a.grad[lo:hi])
	a.crcs[c] = f32.CRC(0, a.grad[lo:hi])
}

// Update applies one Adam step that increases the log-likelihood, given
// gradSum, the gradient of the SUM of log-likelihoods over a global batch of
// batch samples. The mean gradient gradSum/batch is clipped when configured.
// It returns the mean gradient's norm before clipping. A non-finite gradient
// returns ErrNonFinite and changes nothing.
func (a *Adam) Update(params, gradSum []float32, batch int) (float64, error) {
	return a.UpdateWithNorm(params, gradSum, batch, a.GradNorm(gradSum))
}

// UpdateWithNorm is Update for a caller that already has GradNorm(gradSum),
// which saves a pass over the gradient.
func (a *Adam) UpdateWithNorm(params, gradSum []float32, batch int, sumNorm float64) (float64, error) {
	if len(params) != len(gradSum) || len(params) != len(a.M) {
		return 0, fmt.Errorf("adam: %d parameters, %d gradients, %d moments", len(params), len(gradSum), len(a.M))
	}
	if batch < 1 {
		return 0, fmt.Errorf("adam: batch size %d", batch)
	}
	norm := sumNorm / float64(batch)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, ErrNonFinite
	}
	scale := 1 / float64(batch)
	if c := a.Config.ClipNorm; c > 0 && norm > c {
		scale *= c / norm
	}
	a.Step++
	t := float64(a.Step)
	// Fold the bias corrections into the step size and epsilon:
	// p += lr * mhat / (sqrt(vhat) + eps) with mhat = m/(1-b1^t), vhat = v/(1-b2^t).
	bc1 := 1 - math.Pow(a.Config.Beta1, t)
	bc2 := 1 - math.Pow(a.Config.Beta2, t)
	tail := a.Config.ScaleLR
	if tail == 0 {
		tail = a.Config.LR
	}
	a.lr = float32(a.Rate * a.Config.LR * math.Sqrt(bc2) / bc1)
	a.tailLR = float32(a.Rate * tail * math.Sqrt(bc2) / bc1)
	a.eps = float32(a.Config.Eps * math.Sqrt(bc2))
	a.sc = float32(scale)
	a.decay = float32(1 - a.Rate*a.Config.LR*a.Config.WeightDecay)
	a.params, a.grad = params, gradSum
	a.pool.run(adamChunks, a.applyFn)
	a.params, a.grad = nil, nil
	return norm, nil
}

func (a *Adam) applyChunk(c int) {
	lo, hi := chunk(len(a.params), adamChunks, c)
	b1, b2 := float32(a.Config.Beta1), float32(a.Config.Beta2)
	k := vec.AdamConsts{B1: b1, C1: 1 - b1, B2: b2, C2: 1 - b2, LR: a.lr, Eps: a.eps, Scale: a.sc, Decay: a.decay}
	if mid := min(max(a.TailFrom, lo), hi); mid > lo {
		vec.Adam(a.params[lo:mid], a.grad[lo:mid], a.M[lo:mid], a.V[lo:mid], k)
		lo = mid
	}
	if lo < hi {
		k.LR, k.Decay = a.tailLR, 1
		vec.Adam(a.params[lo:hi], a.grad[lo:hi], a.M[lo:hi], a.V[lo:hi], k)
	}
}

// chunk returns the bounds of part c of n items split into parts pieces.
func chunk(n, parts, c int) (lo, hi int) {
	return n * c / parts, n * (c + 1) / parts
}
