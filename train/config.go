package train

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

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
}

// DefaultConfig is the paper's model and optimiser at batch 256.
func DefaultConfig() Config {
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
