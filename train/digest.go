package train

import (
	"encoding/json"
	"fmt"

	"github.com/nice-flow/nice/internal/f32"
)

// Digest identifies the floats of a buffer: CRC-32C of its bytes, which the
// CPU computes at memory speed. Replicas compare digests to prove they hold
// the same parameters or the same reduced gradient.
func Digest(f []float32) uint32 { return f32.CRC(0, f) }

// Digest identifies a state: CRC-32C over parameters and both Adam moments
// in the high half, the step in the low half.
func (s *State) Digest() uint64 {
	c := f32.CRC(0, s.Params)
	c = f32.CRC(c, s.M)
	c = f32.CRC(c, s.V)
	return uint64(c)<<32 | uint64(uint32(s.Position.Step))
}

// EncodedLen is the number of bytes WriteTo writes for s. It fails where
// WriteTo would: on a non-finite number in the header.
func (s *State) EncodedLen() (int64, error) {
	h := header{Version: stateVersion, Config: s.Config, Position: s.Position, AdamStep: s.AdamStep, History: s.History, LossSum: s.LossSum, LossN: s.LossN, Floats: len(s.Params)}
	js, err := json.Marshal(h)
	if err != nil {
		return 0, fmt.Errorf("encoding state header: %w", err)
	}
	return int64(len(stateMagic)+8+len(js)) + int64(len(s.Params))*12 + 32, nil
}

// View returns the trainer's state with the float buffers shared, not copied:
// valid only while the trainer does not step.
func (t *Trainer) View() *State {
	return &State{
		Config: t.Config, Position: t.Position, AdamStep: t.Opt.Step, History: t.History,
		LossSum: t.lossSum, LossN: t.lossN,
		Params: t.Model.Params, M: t.Opt.M, V: t.Opt.V,
	}
}

// CopyInto copies the trainer's state into dst, reusing dst's float buffers
// when they have the right length.
func (t *Trainer) CopyInto(dst *State) {
	n := len(t.Model.Params)
	for _, b := range []*[]float32{&dst.Params, &dst.M, &dst.V} {
		if len(*b) != n {
			*b = make([]float32, n)
		}
	}
	copyFloats(dst.Params, t.Model.Params)
	copyFloats(dst.M, t.Opt.M)
	copyFloats(dst.V, t.Opt.V)
	dst.Config, dst.Position, dst.AdamStep = t.Config, t.Position, t.Opt.Step
	dst.LossSum, dst.LossN = t.lossSum, t.lossN
	dst.History = History{
		Points: append(dst.History.Points[:0], t.History.Points...),
		Epochs: append(dst.History.Epochs[:0], t.History.Epochs...),
	}
}
