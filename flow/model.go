package flow

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Model holds a NICE model's parameters as one flat buffer and its views.
type Model struct {
	Config Config
	Layout Layout
	// Params is the flat parameter buffer; P holds per-layer views into it.
	Params []float32
	P      Views
	// perm maps a position in partition order to its natural pixel index.
	perm []int32
}

// New returns a model with config c and all parameters zero; call Init to
// initialise them from a seed.
func New(c Config) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	l := NewLayout(c)
	m := &Model{Config: c, Layout: l, Params: make([]float32, l.Size())}
	m.P = l.Views(m.Params)
	half := c.Dim / 2
	m.perm = make([]int32, c.Dim)
	for p := range m.perm {
		if p < half {
			m.perm[p] = int32(2 * p)
		} else {
			m.perm[p] = int32(2*(p-half) + 1)
		}
	}
	return m, nil
}

// NumParams is the number of float32 parameters.
func (m *Model) NumParams() int { return len(m.Params) }

// Init sets every parameter deterministically from seed: each dense layer's
// weights and biases uniform in ±1/sqrt(fan-in) (PyTorch's default for Linear),
// the log-scales zero.
func (m *Model) Init(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x6e696365)) // "nice"
	for _, c := range m.P.Couplings {
		for _, d := range c.Layers {
			bound := 1 / math.Sqrt(float64(d.In))
			for i := range d.W {
				d.W[i] = float32((2*rng.Float64() - 1) * bound)
			}
			for i := range d.B {
				d.B[i] = float32((2*rng.Float64() - 1) * bound)
			}
		}
	}
	clear(m.P.Scale)
}

// ZeroOutputs zeroes the weights and biases of every coupling's output layer:
// each coupling then adds nothing, and the flow is the scaling alone.
func (m *Model) ZeroOutputs() {
	for _, c := range m.P.Couplings {
		out := c.Layers[len(c.Layers)-1]
		clear(out.W)
		clear(out.B)
	}
}

// halves returns the column offsets of the conditioning half x1 and the
// transformed half x2 of coupling k, in partition order.
func (m *Model) halves(k int) (x1, x2 int) {
	half := m.Config.Dim / 2
	if k%2 == 0 {
		return 0, half
	}
	return half, 0
}

// Workspace holds the activations and scratch buffers of one batch; it is
// sized for at most Max samples and is reused across calls. A Workspace must
// not be used by two goroutines at once.
type Workspace struct {
	Max int
	cfg Config
	z   []float32 // (Couplings+1) states, Max x Dim each, partition order
	act []float32 // Couplings x HiddenLayers post-ReLU activations, Max x Hidden each
	h   []float32 // output of the flow, natural order
	gh  []float32 // d log p(h) / dh, natural order
	g   []float32 // gradient w.r.t. the current state, partition order
	d1  []float32 // backward scratch, Max x Hidden
	d2  []float32
	out []float32 // MLP output for Inverse, Max x Dim/2
	one []float32 // Max ones, for column sums
	ll  []float64 // per-sample log-likelihoods

	expS      []float32
	sumS      float64
	gradBuf   *float32
	gradViews Views

	// The operands of the parts of a step running on the pool, and the
	// functions that run them, bound once so that a step allocates nothing.
	model     *Model
	x         []float32
	n, k, l   int
	back      backLayer
	permuteFn func(int)
	layerFn   func(int)
	priorFn   func(int)
	backFn    func(int)
}

// NewWorkspace returns buffers for batches of up to max samples.
func NewWorkspace(c Config, max int) *Workspace {
	if max < 1 {
		max = 1
	}
	D, H, C, L := c.Dim, c.Hidden, c.Couplings, c.HiddenLayers
	w := &Workspace{
		Max:  max,
		cfg:  c,
		z:    make([]float32, (C+1)*max*D),
		act:  make([]float32, C*L*max*H),
		h:    make([]float32, max*D),
		gh:   make([]float32, max*D),
		g:    make([]float32, max*D),
		d1:   make([]float32, max*H),
		d2:   make([]float32, max*H),
		out:  make([]float32, max*D/2),
		one:  make([]float32, max),
		ll:   make([]float64, max),
		expS: make([]float32, D),
	}
	for i := range w.one {
		w.one[i] = 1
	}
	w.permuteFn = w.permutePart
	w.layerFn = w.layerPartFn
	w.priorFn = w.priorPart
	w.backFn = w.backPart
	return w
}

func (w *Workspace) state(k, n int) []float32 {
	sz := w.Max * w.cfg.Dim
	return w.z[k*sz : k*sz+n*w.cfg.Dim]
}

func (w *Workspace) activation(k, l, n int) []float32 {
	sz := w.Max * w.cfg.Hidden
	i := k*w.cfg.HiddenLayers + l
	return w.act[i*sz : i*sz+n*w.cfg.Hidden]
}

func (m *Model) check(w *Workspace, n int, bufs ...[]float32) {
	if w.cfg != m.Config {
		panic(fmt.Sprintf("flow: workspace for %+v used with model %+v", w.cfg, m.Config))
	}
	if n < 0 || n > w.Max {
		panic(fmt.Sprintf("flow: batch of %d samples, workspace holds at most %d", n, w.Max))
	}
	for _, b := range bufs {
		if len(b) < n*m.Config.Dim {
			panic(fmt.Sprintf("flow: buffer of %d floats for %d samples of %d", len(b), n, m.Config.Dim))
		}
	}
}

// FLOPsPerSample estimates the floating-point operations of one training step
// per sample: the matrix products of the forward pass, and twice that for the
// backward pass (weight gradients and input gradients).
func FLOPsPerSample(c Config) float64 {
	half := float64(c.Dim / 2)
	h := float64(c.Hidden)
	perCoupling := 2 * (half*h + float64(c.HiddenLayers-1)*h*h + h*half)
	return 3 * float64(c.Couplings) * perCoupling
}
