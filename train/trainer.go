package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
)

// Data is the training set and the set that is scored each epoch.
type Data struct {
	Train, Eval *mnist.Set
	// EvalName says what Eval is: "test" or "validation".
	EvalName string
}

// SplitData applies c.Validation to the published sets.
func SplitData(c Config, trainSet, testSet *mnist.Set) Data {
	if c.Validation {
		head, tail := trainSet.Split(mnist.ValidationSize)
		return Data{Train: head, Eval: tail, EvalName: "validation"}
	}
	return Data{Train: trainSet, Eval: testSet, EvalName: "test"}
}

// Trainer is one replica of the model with its optimiser and the buffers of a
// training step. It is not safe for concurrent use.
type Trainer struct {
	Config   Config
	Model    *flow.Model
	Opt      *flow.Adam
	Data     Data
	Position Position
	History  History
	// Grad holds the gradient of the last ComputeGradient (or, after an
	// all-reduce, of the whole global batch).
	Grad []float32

	ws        *flow.Workspace
	x         []float32
	perm      []int32
	permEpoch int
	lossSum   float64 // training NLL summed since the last history point
	lossN     int
}

// New returns a trainer at step 0 with parameters initialised from c.Seed
// (and, with c.Init "data", the log-scales fitted to the first images).
func New(c Config, d Data) (*Trainer, error) {
	t, err := newTrainer(c, d)
	if err != nil {
		return nil, err
	}
	if err := t.initParams(); err != nil {
		return nil, err
	}
	return t, nil
}

// newTrainer returns a trainer whose parameters are still to be set.
func newTrainer(c Config, d Data) (*Trainer, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Model.Dim != mnist.Pixels {
		return nil, fmt.Errorf("model dim %d: MNIST images have %d pixels", c.Model.Dim, mnist.Pixels)
	}
	if d.Train == nil || d.Train.N == 0 {
		return nil, errors.New("no training data")
	}
	m, err := flow.New(c.Model)
	if err != nil {
		return nil, err
	}
	t := &Trainer{
		Config:    c,
		Model:     m,
		Opt:       flow.NewAdam(c.Adam, m.NumParams()),
		Data:      d,
		Grad:      make([]float32, m.NumParams()),
		ws:        flow.NewWorkspace(c.Model, c.Batch),
		x:         make([]float32, c.Batch*c.Model.Dim),
		perm:      make([]int32, d.Train.N),
		permEpoch: -1,
	}
	t.Opt.TailFrom = m.NumParams() - c.Model.Dim
	return t, nil
}

// initParams sets the parameters of step 0.
func (t *Trainer) initParams() error {
	c := t.Config
	initModel(t.Model, c)
	if !c.NeedsData() {
		return nil
	}
	k := c.InitSamples
	if k == 0 {
		k = c.Batch
	}
	k = min(k, t.Data.Train.N)
	mnist.Permutation(t.perm, c.Seed, 0)
	t.permEpoch = 0
	D := c.Model.Dim
	x, z := make([]float32, k*D), make([]float32, k*D)
	t.Data.Train.FillBatch(x, t.perm[:k], c.Seed, 0)
	if err := t.Model.FitScale(t.ws, x, k, z); err != nil {
		return fmt.Errorf("data initialisation: %w", err)
	}
	return nil
}

// Restore returns a trainer continuing from s.
func Restore(s *State, d Data) (*Trainer, error) {
	t, err := newTrainer(s.Config, d)
	if err != nil {
		return nil, fmt.Errorf("restoring state: %w", err)
	}
	if err := t.SetState(s); err != nil {
		return nil, err
	}
	return t, nil
}

// SetState replaces the trainer's state with s, which must have the same
// configuration hash.
func (t *Trainer) SetState(s *State) error {
	if s.Config.Hash() != t.Config.Hash() {
		return fmt.Errorf("state was made with config %s, this trainer has %s", s.Config.Hash(), t.Config.Hash())
	}
	n := len(t.Model.Params)
	if len(s.Params) != n || len(s.M) != n || len(s.V) != n {
		return fmt.Errorf("state holds %d/%d/%d floats, the model needs %d", len(s.Params), len(s.M), len(s.V), n)
	}
	copyFloats(t.Model.Params, s.Params)
	copyFloats(t.Opt.M, s.M)
	copyFloats(t.Opt.V, s.V)
	t.Opt.Step = s.AdamStep
	t.Position = s.Position
	t.History = History{
		Points: append([]Point(nil), s.History.Points...),
		Epochs: append([]EpochResult(nil), s.History.Epochs...),
	}
	t.Config.Epochs = s.Config.Epochs
	t.lossSum, t.lossN = s.LossSum, s.LossN
	return nil
}

// State returns a deep copy of the trainer's state.
func (t *Trainer) State() *State {
	return &State{
		Config:   t.Config,
		Position: t.Position,
		AdamStep: t.Opt.Step,
		History: History{
			Points: append([]Point(nil), t.History.Points...),
			Epochs: append([]EpochResult(nil), t.History.Epochs...),
		},
		LossSum: t.lossSum,
		LossN:   t.lossN,
		Params:  cloneFloats(t.Model.Params),
		M:       cloneFloats(t.Opt.M),
		V:       cloneFloats(t.Opt.V),
	}
}

func cloneFloats(f []float32) []float32 {
	c := make([]float32, len(f))
	copyFloats(c, f)
	return c
}

// StepsPerEpoch is the number of global batches in an epoch.
func (t *Trainer) StepsPerEpoch() int { return StepsPerEpoch(t.Data.Train.N, t.Config.Batch) }

// Done reports whether all configured epochs are complete.
func (t *Trainer) Done() bool { return t.Position.Epoch >= t.Config.Epochs }

// BatchIndices returns the training-set indices of the global batch at p. The
// slice is only valid until the next call for another epoch.
func (t *Trainer) BatchIndices(p Position) []int32 {
	if t.permEpoch != p.Epoch {
		mnist.Permutation(t.perm, t.Config.Seed, uint64(p.Epoch))
		t.permEpoch = p.Epoch
	}
	lo, hi := BatchBounds(t.Data.Train.N, t.Config.Batch, p.StepInEpoch)
	return t.perm[lo:hi]
}

// ComputeGradient writes into t.Grad the gradient of the sum of the
// log-likelihoods of the training samples indices (dequantised for epoch) and
// returns that sum.
func (t *Trainer) ComputeGradient(indices []int32, epoch int) float64 {
	n := len(indices)
	if n > t.ws.Max {
		panic(fmt.Sprintf("train: %d samples in a step of at most %d", n, t.ws.Max))
	}
	if n == 0 {
		clear(t.Grad)
		return 0
	}
	t.Data.Train.FillBatch(t.x, indices, t.Config.Seed, uint64(epoch))
	return t.Model.Gradient(t.ws, t.x, n, t.Grad)
}

// Apply takes t.Grad as the gradient of the summed log-likelihood over the
// whole global batch of batch samples, whose log-likelihoods summed to sumLL,
// applies the Adam update and advances the position. A non-finite gradient is
// refused and changes nothing.
func (t *Trainer) Apply(batch int, sumLL float64) error {
	return t.ApplyWithNorm(batch, sumLL, t.Opt.GradNorm(t.Grad))
}

// ApplyWithNorm is Apply for a caller that already has t.Opt.GradNorm(t.Grad)
// (a worker computes it to refuse a non-finite gradient before reporting).
func (t *Trainer) ApplyWithNorm(batch int, sumLL, gradNorm float64) error {
	if math.IsNaN(sumLL) || math.IsInf(sumLL, 0) {
		return fmt.Errorf("step %d: log-likelihood %v: %w", t.Position.Step, sumLL, flow.ErrNonFinite)
	}
	spe := t.StepsPerEpoch()
	t.Opt.Rate = t.Config.LRFactor(t.Position.Step, spe)
	if _, err := t.Opt.UpdateWithNorm(t.Model.Params, t.Grad, batch, gradNorm); err != nil {
		return fmt.Errorf("step %d: %w (the update was not applied; try a lower --lr or --clip 1)", t.Position.Step, err)
	}
	t.lossSum += -sumLL / float64(batch)
	t.lossN++
	t.Position = t.Position.Next(spe)
	if t.Position.Step%int64(t.Config.LogEvery) == 0 {
		t.History.Points = append(t.History.Points, Point{
			Step:     t.Position.Step,
			Epoch:    float64(t.Position.Step) / float64(spe),
			TrainNLL: t.lossSum / float64(t.lossN),
		})
		t.lossSum, t.lossN = 0, 0
	}
	return nil
}

// Step takes one whole training step in this process and returns the batch's
// mean negative log-likelihood.
func (t *Trainer) Step() (float64, error) {
	idx := t.BatchIndices(t.Position)
	ll := t.ComputeGradient(idx, t.Position.Epoch)
	n := len(idx)
	if err := t.Apply(n, ll); err != nil {
		return 0, err
	}
	return -ll / float64(n), nil
}

// EvalSum scores eval-set images [lo, hi) with the fixed evaluation noise and
// returns the sum of their log-likelihoods.
func (t *Trainer) EvalSum(lo, hi int) float64 {
	return EvalSum(t.Model, t.ws, t.x, t.Data.Eval, lo, hi, t.Config.EvalSeed)
}

// Evaluate returns the mean log-likelihood in nats per image of the whole
// eval set.
func (t *Trainer) Evaluate() float64 {
	return t.EvalSum(0, t.Data.Eval.N) / float64(t.Data.Eval.N)
}

// EvalSum scores images [lo, hi) of set with model and returns the sum of their
// log-likelihoods; ws and x are scratch for batches of ws.Max images.
func EvalSum(m *flow.Model, ws *flow.Workspace, x []float32, set *mnist.Set, lo, hi int, seed uint64) float64 {
	idx := make([]int32, ws.Max)
	var total float64
	for start := lo; start < hi; start += ws.Max {
		n := min(ws.Max, hi-start)
		for j := 0; j < n; j++ {
			idx[j] = int32(start + j)
		}
		set.FillBatch(x, idx[:n], seed, 0)
		total += m.LogLikelihood(ws, x, n, nil)
	}
	return total
}

// BitsPerDim converts a mean log-likelihood in nats per image of the
// dequantised [0,1] data to bits per dimension of the 8-bit images.
func BitsPerDim(ll float64, dim int) float64 {
	return 8 - ll/(float64(dim)*math.Ln2)
}

// Samples draws n samples from m in batches that fit ws.
func Samples(m *flow.Model, ws *flow.Workspace, n int, seed uint64) []float32 {
	return SamplesAt(m, ws, n, seed, 1)
}

// SamplesAt is Samples at a temperature of the prior (flow.Model.SampleAt).
func SamplesAt(m *flow.Model, ws *flow.Workspace, n int, seed uint64, temperature float64) []float32 {
	D := m.Config.Dim
	out := make([]float32, n*D)
	for start, k := 0, uint64(0); start < n; start, k = start+ws.Max, k+1 {
		c := min(ws.Max, n-start)
		m.SampleAt(ws, c, seed+k, temperature, out[start*D:(start+c)*D])
	}
	return out
}

// InitialState is the state at step 0 of a run with config c: parameters
// initialised from c.Seed (the log-scales fitted to d's training images when
// c.NeedsData), zero moments. Otherwise d may be empty.
func InitialState(c Config, d Data) (*State, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.NeedsData() {
		t, err := New(c, d)
		if err != nil {
			return nil, err
		}
		return t.State(), nil
	}
	m, err := flow.New(c.Model)
	if err != nil {
		return nil, err
	}
	initModel(m, c)
	n := m.NumParams()
	return &State{Config: c, Params: m.Params, M: make([]float32, n), V: make([]float32, n)}, nil
}

// initModel sets m's parameters from c.Seed, the couplings' output layers
// zeroed when c.IdentityStart: step 0 before any fit to the data.
func initModel(m *flow.Model, c Config) {
	m.Init(c.Seed)
	if c.IdentityStart {
		m.ZeroOutputs()
	}
}
