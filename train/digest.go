package train

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Digest identifies the floats of a buffer: CRC-32C of its bytes, which the
// CPU computes at memory speed. Replicas compare digests to prove they hold
// the same parameters or the same reduced gradient.
func Digest(f []float32) uint32 { return crcUpdate(0, f) }

// crcUpdate continues crc over f's bytes in pieces of pieceBytes: the CRC
// instruction loop cannot be preempted, and one call over a 77 MB buffer
// (7 ms) kept a GOMAXPROCS=1 worker from answering its ring neighbours for
// that long.
func crcUpdate(crc uint32, f []float32) uint32 {
	b := floatBytes(f)
	for len(b) > 0 {
		k := min(len(b), pieceBytes)
		crc = crc32.Update(crc, castagnoli, b[:k])
		b = b[k:]
	}
	return crc
}

// Digest identifies a state: CRC-32C over parameters and both Adam moments
// in the high half, the step in the low half.
func (s *State) Digest() uint64 {
	c := crcUpdate(0, s.Params)
	c = crcUpdate(c, s.M)
	c = crcUpdate(c, s.V)
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
