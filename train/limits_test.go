package train

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
)

func TestModelFloatsIsTheLayoutSize(t *testing.T) {
	for _, c := range []flow.Config{
		flow.DefaultConfig(),
		{Dim: 784, Couplings: 4, Hidden: 16, HiddenLayers: 2, Prior: flow.Logistic},
		{Dim: 2, Couplings: 1, Hidden: 1, HiddenLayers: 1, Prior: flow.Gaussian},
		{Dim: 10, Couplings: 3, Hidden: 7, HiddenLayers: 6, Prior: flow.Logistic},
	} {
		got, err := ModelFloats(c)
		if err != nil || got != flow.NewLayout(c).Size() {
			t.Errorf("%+v: ModelFloats %d (err %v), the layout has %d", c, got, err, flow.NewLayout(c).Size())
		}
	}
	for _, c := range []flow.Config{
		{Dim: 784, Couplings: 4, Hidden: 1 << 20, HiddenLayers: 5, Prior: flow.Logistic},
		{Dim: 784, Couplings: 4, Hidden: math.MaxInt, HiddenLayers: math.MaxInt, Prior: flow.Logistic},
		{Dim: math.MaxInt - 1, Couplings: math.MaxInt, Hidden: 3, HiddenLayers: 1, Prior: flow.Logistic},
		{Dim: 3, Couplings: 1, Hidden: 1, HiddenLayers: 1, Prior: flow.Logistic},
	} {
		if n, err := ModelFloats(c); err == nil {
			t.Errorf("%+v: %d floats accepted", c, n)
		}
	}
}

// rawState encodes a header and float bytes as WriteTo lays them out, with
// a correct checksum, whatever the header claims.
func rawState(t *testing.T, h header, floats []byte) []byte {
	t.Helper()
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString(stateMagic)
	binary.Write(&b, binary.LittleEndian, uint64(len(js)))
	b.Write(js)
	b.Write(floats)
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

// onlyReader hides bytes.Reader's Len, as a file or a stream does.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// allocated returns the bytes f allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A header's claims are checked against its own configuration, and the
// data against what the input holds, before the float buffers are
// allocated: a few bytes cannot make the reader allocate gigabytes.
func TestReadStateRefusesBeforeAllocating(t *testing.T) {
	full := DefaultConfig()
	fullFloats, err := ModelFloats(full.Model)
	if err != nil {
		t.Fatal(err)
	}
	small := tinyConfig()
	smallFloats, _ := ModelFloats(small.Model)
	longHeader := []byte(stateMagic + "\x00\x00\x00\x04\x00\x00\x00\x00{") // claims 64 MiB, holds one byte
	cases := []struct {
		name  string
		input []byte
		plain bool // read without Len
		want  string
	}{
		{"float count above the model's", rawState(t, header{Version: stateVersion, Config: small, Floats: 1 << 31}, nil), false, "announces 2147483648 floats"},
		{"float count below the model's", rawState(t, header{Version: stateVersion, Config: small, Floats: smallFloats - 1}, make([]byte, 12*(smallFloats-1))), false, "announces"},
		{"full model, no data, stream", rawState(t, header{Version: stateVersion, Config: full, Floats: fullFloats}, nil), true, "truncated data"},
		{"full model, no data, in memory", rawState(t, header{Version: stateVersion, Config: full, Floats: fullFloats}, nil), false, "truncated data"},
		{"invalid configuration", rawState(t, header{Version: stateVersion, Config: Config{}, Floats: 0}, nil), false, "configuration"},
		{"header length beyond the limit", []byte(stateMagic + "\xff\xff\xff\xff\xff\xff\xff\xff"), false, "header length"},
		{"header shorter than its length", longHeader, true, "truncated header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader = bytes.NewReader(tc.input)
			if tc.plain {
				r = onlyReader{r}
			}
			var err error
			n := allocated(func() { _, err = ReadState(r) })
			if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrCorruptState saying %q", err, tc.want)
			}
			if n > 8<<20 {
				t.Fatalf("refusing %d bytes of input allocated %d bytes", len(tc.input), n)
			}
			t.Logf("refused after allocating %d KiB: %v", n>>10, err)
		})
	}
}

// A state read from a stream (no Len) still decodes exactly.
func TestReadStateFromStream(t *testing.T) {
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	steps(t, tr, 3)
	want := tr.State()
	blob, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadState(onlyReader{bytes.NewReader(blob)})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest() != want.Digest() || !sameBits(got.V, want.V) || len(got.History.Points) != len(want.History.Points) {
		t.Fatal("a state read from a stream differs from the one written")
	}
}

// The range a receiver accepts holds every state a run can make: here one
// whose history is as long as the run allows, with the longest numbers.
func TestEncodedLenRangeHoldsTheLongestState(t *testing.T) {
	c := tinyConfig()
	lo, hi, err := EncodedLenRange(c)
	if err != nil {
		t.Fatal(err)
	}
	st, err := InitialState(c, Data{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := st.EncodedLen(); err != nil || n < lo || n > hi {
		t.Fatalf("the initial state has %d bytes, outside [%d, %d]", n, lo, hi)
	}
	steps := c.Epochs * StepsPerEpoch(mnist.TrainSize, c.Batch)
	for i := 0; i <= steps/c.LogEvery; i++ {
		st.History.Points = append(st.History.Points, Point{Step: math.MinInt64, Epoch: -math.MaxFloat64, TrainNLL: -math.SmallestNonzeroFloat64 * 3})
	}
	for i := 0; i < c.Epochs; i++ {
		st.History.Epochs = append(st.History.Epochs, EpochResult{Epoch: math.MinInt, Step: math.MinInt64, TrainNLL: -math.MaxFloat64,
			TestLL: -math.MaxFloat64, BitsPerDim: -math.MaxFloat64, SamplesPerSec: -math.MaxFloat64})
	}
	st.Config.Epochs = math.MaxInt // a resumed run may extend the run
	st.Position = Position{Step: math.MinInt64, Epoch: math.MinInt, StepInEpoch: math.MinInt}
	st.AdamStep, st.LossSum, st.LossN = math.MinInt64, -math.MaxFloat64, math.MinInt
	if n, err := st.EncodedLen(); err != nil || n > hi {
		t.Fatalf("the longest state has %d bytes, above the bound %d", n, hi)
	}
	// The bound is not loose enough to matter: a few KiB above the floats.
	if floats, _ := ModelFloats(c.Model); hi-12*int64(floats) > 1<<20 {
		t.Fatalf("the bound allows %d bytes of header for a run of %d steps", hi-12*int64(floats), steps)
	}
}
