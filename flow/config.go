package flow

import (
	"errors"
	"fmt"
)

// Prior names the base distribution of the flow.
type Prior string

// The supported priors.
const (
	Logistic Prior = "logistic"
	Gaussian Prior = "gaussian"
)

// Config describes the shape of a NICE model.
type Config struct {
	// Dim is the number of input dimensions (784 for MNIST). It must be even.
	Dim int `json:"dim"`
	// Couplings is the number of additive coupling layers (paper: 4).
	Couplings int `json:"couplings"`
	// Hidden is the width of each hidden layer of a coupling's MLP (paper: 1000).
	Hidden int `json:"hidden"`
	// HiddenLayers is the number of hidden ReLU layers per MLP (paper: 5).
	HiddenLayers int `json:"hidden_layers"`
	// Prior is the base distribution (paper: logistic).
	Prior Prior `json:"prior"`
}

// DefaultConfig is the paper's MNIST model: about 19.2 M parameters.
func DefaultConfig() Config {
	return Config{Dim: 784, Couplings: 4, Hidden: 1000, HiddenLayers: 5, Prior: Logistic}
}

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	var errs []error
	if c.Dim < 2 || c.Dim%2 != 0 {
		errs = append(errs, fmt.Errorf("dim %d: must be even and at least 2", c.Dim))
	}
	if c.Couplings < 1 {
		errs = append(errs, fmt.Errorf("couplings %d: need at least 1", c.Couplings))
	}
	if c.Hidden < 1 {
		errs = append(errs, fmt.Errorf("hidden width %d: need at least 1", c.Hidden))
	}
	if c.HiddenLayers < 1 {
		errs = append(errs, fmt.Errorf("hidden layers %d: need at least 1", c.HiddenLayers))
	}
	if c.Prior != Logistic && c.Prior != Gaussian {
		errs = append(errs, fmt.Errorf("prior %q: use %q or %q", c.Prior, Logistic, Gaussian))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid model config: %w", errors.Join(errs...))
	}
	return nil
}
