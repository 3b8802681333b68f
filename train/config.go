package train

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/nice-flow/nice/flow"
)

// Config is everything that determines a training trajectory.
type Config struct {
	Model flow.Config     `json:"model"`
	Adam  flow.AdamConfig `json:"adam"`
	// Batch is the global batch size B, whatever the number of workers.
	Batch int `json:"batch"`
	// Seed fixes the initial parameters, the epoch permutations and the
	// dequantisation noise.
	Seed uint64 `json:"seed"`
	// Epochs is how many epochs to train in all.
	Epochs int `json:"epochs"`
	// Validation holds out the last 10,000 training images and scores on them
	// instead of the test set, as the paper's code does.
	Validation bool `json:"validation"`
	// EvalSeed fixes the dequantisation noise used when scoring, so scores of
	// different epochs are comparable.
	EvalSeed uint64 `json:"eval_seed"`
	// LogEvery records the training NLL in the history every this many steps.
	LogEvery int `json:"log_every"`
	// GradientWire is how the workers' ring sends the gradient: "" (float32,
	// exact) or "bf16" (rounded to bfloat16: half the bytes, other
	// numbers). It changes the trajectory of a run of several workers.
	GradientWire string `json:"gradient_wire,omitempty"`
	// Init is how the log-scales s start: "" (zero, the paper's) or
	// "data": each set to what maximises the log-likelihood of the first
	// InitSamples images of the first epoch's order (with that epoch's
	// noise), dimension by dimension, the couplings as initialised.
	Init string `json:"init,omitempty"`
	// IdentityStart zeroes each coupling's output layer at the start, so
	// the couplings begin as the identity and learn from there (the hidden
	// layers keep their random start).
	IdentityStart bool `json:"identity_start,omitempty"`
	// InitSamples is how many images the data initialisation fits (0: one
	// batch).
	InitSamples int `json:"init_samples,omitempty"`
	// WarmupSteps raises the learning rate linearly from 1/WarmupSteps of
	// its peak over the first WarmupSteps steps (0: no warm-up).
	WarmupSteps int `json:"warmup_steps,omitempty"`
	// DecayEpochs lowers the learning rate along a half cosine from its peak
	// at step 0 to FinalLR times the peak at the end of epoch DecayEpochs,
	// and holds it there after (0: no decay). It is fixed when a run starts:
	// extending a run's epochs does not stretch it.
	DecayEpochs int `json:"decay_epochs,omitempty"`
	// FinalLR is the fraction of the peak learning rate the decay ends at.
	FinalLR float64 `json:"final_lr,omitempty"`
	// DecayShape is the decay's curve: "" (a half cosine) or "linear" (a
	// straight line from the peak to FinalLR).
	DecayShape string `json:"decay_shape,omitempty"`
}

// DecayShape values.
const (
	DecayCosine = ""
	DecayLinear = "linear"
)

// Init values.
const (
	InitZero = ""
	InitData = "data"
)

// PaperConfig is the paper's model and optimiser at batch 256: zero
// log-scales at the start and a constant learning rate of 1e-3.
func PaperConfig() Config {
	return Config{
		Model:    flow.DefaultConfig(),
		Adam:     flow.DefaultAdam(),
		Batch:    256,
		Seed:     1,
		Epochs:   10,
		EvalSeed: 0x5eed,
		LogEvery: 20,
	}
}

// DefaultConfig is the paper's model trained by the recipe chosen by
// measurement (README, "Results"): the couplings start as the identity and
// the log-scales fitted to the first batch; the learning rate warms up to
// 2e-3 over 200 steps and falls along a half cosine to 0 at the last epoch
// (24: within 30 minutes on two cores); the couplings' weights decay by 0.3
// times the learning rate each step.
func DefaultConfig() Config {
	c := PaperConfig()
	c.Init, c.IdentityStart = InitData, true
	c.Adam.LR = 2e-3
	c.Adam.WeightDecay = 0.3
	c.WarmupSteps = 200
	c.Epochs = 24
	c.DecayEpochs = c.Epochs
	return c
}

// Validate reports everything wrong with c.
func (c Config) Validate() error {
	var errs []error
	if err := c.Model.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Adam.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Batch < 1 {
		errs = append(errs, fmt.Errorf("batch %d: must be at least 1", c.Batch))
	}
	if c.Epochs < 1 {
		errs = append(errs, fmt.Errorf("epochs %d: must be at least 1", c.Epochs))
	}
	if c.LogEvery < 1 {
		errs = append(errs, fmt.Errorf("log-every %d: must be at least 1", c.LogEvery))
	}
	if c.Init != InitZero && c.Init != InitData {
		errs = append(errs, fmt.Errorf("init %q: want zero (\"\") or data", c.Init))
	}
	if c.InitSamples < 0 {
		errs = append(errs, fmt.Errorf("init samples %d: must be 0 (one batch) or more", c.InitSamples))
	}
	if c.WarmupSteps < 0 {
		errs = append(errs, fmt.Errorf("warm-up %d steps: must be 0 (none) or more", c.WarmupSteps))
	}
	if c.DecayEpochs < 0 {
		errs = append(errs, fmt.Errorf("decay over %d epochs: must be 0 (none) or more", c.DecayEpochs))
	}
	if !(c.FinalLR >= 0 && c.FinalLR <= 1) {
		errs = append(errs, fmt.Errorf("final learning rate fraction %v: must be in [0, 1]", c.FinalLR))
	}
	if c.DecayShape != DecayCosine && c.DecayShape != DecayLinear {
		errs = append(errs, fmt.Errorf("decay shape %q: want cosine (\"\") or linear", c.DecayShape))
	}
	if c.GradientWire != "" && c.GradientWire != "bf16" {
		errs = append(errs, fmt.Errorf("gradient wire %q: want fp32 (\"\") or bf16", c.GradientWire))
	}
	return errors.Join(errs...)
}

// Hash identifies the parts of c that fix the trajectory (everything but the
// number of epochs, which a resumed run may extend).
func (c Config) Hash() string {
	c.Epochs = 0
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// LRFactor is the fraction of the peak learning rate that step (counted from
// 0) applies, in an epoch of stepsPerEpoch steps: the warm-up's ramp times the
// decay's curve (a half cosine or a line).
func (c Config) LRFactor(step int64, stepsPerEpoch int) float64 {
	f := 1.0
	if w := int64(c.WarmupSteps); step < w {
		f = float64(step+1) / float64(w)
	}
	if c.DecayEpochs > 0 {
		p := min(1, float64(step)/float64(int64(c.DecayEpochs)*int64(stepsPerEpoch)))
		down := 0.5 * (1 + math.Cos(math.Pi*p))
		if c.DecayShape == DecayLinear {
			down = 1 - p
		}
		f *= c.FinalLR + (1-c.FinalLR)*down
	}
	return f
}

// NeedsData reports whether the state at step 0 depends on the training
// data (InitialState then needs it).
func (c Config) NeedsData() bool { return c.Init == InitData }
