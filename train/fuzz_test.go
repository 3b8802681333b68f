package train

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/nice-flow/nice/flow"
)

// FuzzReadState decodes arbitrary bytes. When the first byte is odd the
// rest gets its correct sha256 appended, so that the fuzzer reaches the
// header and float checks instead of stopping at the checksum. Whatever
// the input, ReadState does not panic, and a state it returns has float
// buffers of its model's size and encodes to bytes that decode to the same
// state.
func FuzzReadState(f *testing.F) {
	// A model small enough that a whole state is a useful fuzz input.
	c := tinyConfig()
	c.Model = flow.Config{Dim: 4, Couplings: 1, Hidden: 2, HiddenLayers: 1, Prior: flow.Logistic}
	st, err := InitialState(c, Data{})
	if err != nil {
		f.Fatal(err)
	}
	st.Position = Position{Step: 3, Epoch: 1, StepInEpoch: 1}
	st.History.Points = []Point{{Step: 2, Epoch: 0.5, TrainNLL: 1.25}}
	st.History.Epochs = []EpochResult{{Epoch: 1, Step: 2, TestLL: -3}}
	blob, err := st.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Add(append([]byte{1}, blob[:len(blob)-sha256.Size]...))
	f.Add(append([]byte{1}, blob[:len(stateMagic)+8]...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 0 && in[0]&1 == 1 {
			sum := sha256.Sum256(in[1:])
			in = append(in[1:len(in):len(in)], sum[:]...)
		}
		s, err := ReadState(bytes.NewReader(in))
		if err != nil {
			return
		}
		n, err := ModelFloats(s.Config.Model)
		if err != nil || len(s.Params) != n || len(s.M) != n || len(s.V) != n {
			t.Fatalf("decoded %d/%d/%d floats for a model of %d (err %v)", len(s.Params), len(s.M), len(s.V), n, err)
		}
		blob, err := s.Encode()
		if err != nil {
			t.Fatalf("a decoded state does not encode again: %v", err)
		}
		again, err := DecodeState(blob)
		if err != nil {
			t.Fatalf("a decoded state does not decode once encoded again: %v", err)
		}
		if again.Digest() != s.Digest() || again.Position != s.Position || again.Config != s.Config {
			t.Fatal("a decoded state changed when encoded and decoded again")
		}
	})
}

// FuzzReadSaved decodes arbitrary bytes as either kind of model file, with
// the same trick for the checksum as FuzzReadState. It never panics; a
// model it returns has its configuration's number of parameters, and an
// export re-encodes to the bytes it was read from.
func FuzzReadSaved(f *testing.F) {
	c := tinyConfig()
	c.Model = flow.Config{Dim: 4, Couplings: 1, Hidden: 2, HiddenLayers: 1, Prior: flow.Logistic}
	st, err := InitialState(c, Data{})
	if err != nil {
		f.Fatal(err)
	}
	st.Position = Position{Step: 3, Epoch: 1, StepInEpoch: 1}
	st.History.Epochs = []EpochResult{{Epoch: 1, Step: 2, TestLL: -3}}
	var exp bytes.Buffer
	if _, err := st.Export().WriteTo(&exp); err != nil {
		f.Fatal(err)
	}
	blob, err := st.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(exp.Bytes())
	f.Add(blob)
	f.Add(append([]byte{1}, exp.Bytes()[:exp.Len()-sha256.Size]...))
	f.Add([]byte(exportMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 0 && in[0]&1 == 1 {
			sum := sha256.Sum256(in[1:])
			in = append(in[1:len(in):len(in)], sum[:]...)
		}
		s, err := ReadSaved(bytes.NewReader(in))
		if err != nil {
			return
		}
		n, err := ModelFloats(s.Model.Config.Model)
		if err != nil || len(s.Model.Params) != n {
			t.Fatalf("decoded %d parameters for a model of %d (err %v)", len(s.Model.Params), n, err)
		}
		if s.State != nil {
			return // FuzzReadState covers states
		}
		var again bytes.Buffer
		if _, err := s.Model.WriteTo(&again); err != nil {
			t.Fatalf("a decoded export does not encode again: %v", err)
		}
		e, err := ReadExported(&again)
		if err != nil {
			t.Fatalf("a decoded export does not decode once encoded again: %v", err)
		}
		if e.Config != s.Model.Config || e.Position != s.Model.Position || Digest(e.Params) != Digest(s.Model.Params) {
			t.Fatal("a decoded export changed when encoded and decoded again")
		}
	})
}
