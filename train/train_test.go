package train

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
)

// tinyConfig trains a small model on MNIST-sized images quickly.
func tinyConfig() Config {
	c := PaperConfig()
	c.Model = flow.Config{Dim: 784, Couplings: 4, Hidden: 16, HiddenLayers: 2, Prior: flow.Logistic}
	c.Batch = 16
	c.Epochs = 3
	c.LogEvery = 2
	return c
}

// syntheticSet is n random 28x28 images: enough to exercise the schedule
// without the real files.
func syntheticSet(n int, seed uint64) *mnist.Set {
	rng := rand.New(rand.NewPCG(seed, 0))
	s := &mnist.Set{N: n, Images: make([]uint8, n*mnist.Pixels), Labels: make([]uint8, n)}
	for i := range s.Images {
		s.Images[i] = uint8(rng.IntN(256))
	}
	return s
}

func syntheticData() Data {
	return Data{Train: syntheticSet(100, 1), Eval: syntheticSet(20, 2), EvalName: "test"}
}

func mustTrainer(t *testing.T, c Config, d Data) *Trainer {
	t.Helper()
	tr, err := New(c, d)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func steps(t *testing.T, tr *Trainer, k int) {
	t.Helper()
	for i := 0; i < k; i++ {
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// scheduledConfig is tinyConfig with every part of a recipe on: the data
// initialisation, a warm-up, a decay that ends within 11 steps, a
// learning rate of its own for the log-scales and weight decay.
func scheduledConfig() Config {
	c := tinyConfig()
	c.Init, c.InitSamples, c.IdentityStart = InitData, 20, true
	c.WarmupSteps, c.DecayEpochs, c.FinalLR = 3, 1, 0.1
	c.Adam.ScaleLR, c.Adam.WeightDecay = 3e-3, 0.5
	return c
}

func TestResumedRunEqualsUninterruptedBitwise(t *testing.T) {
	t.Run("constant", func(t *testing.T) { testResumedRunEqualsUninterrupted(t, tinyConfig()) })
	t.Run("scheduled", func(t *testing.T) { testResumedRunEqualsUninterrupted(t, scheduledConfig()) })
}

func testResumedRunEqualsUninterrupted(t *testing.T, c Config) {
	d := syntheticData()
	// 100 samples at batch 16: 7 steps an epoch, the last of 4 samples; 11
	// steps cross an epoch boundary and a history point.
	whole := mustTrainer(t, c, d)
	steps(t, whole, 11)

	first := mustTrainer(t, c, d)
	steps(t, first, 5)
	blob, err := first.State().Encode()
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeState(blob)
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := Restore(s, d)
	if err != nil {
		t.Fatal(err)
	}
	steps(t, resumed, 6)

	if !sameBits(whole.Model.Params, resumed.Model.Params) {
		t.Fatal("parameters of the resumed run differ from the uninterrupted run")
	}
	if !sameBits(whole.Opt.M, resumed.Opt.M) || !sameBits(whole.Opt.V, resumed.Opt.V) {
		t.Fatal("Adam moments of the resumed run differ")
	}
	if whole.Position != resumed.Position || whole.Opt.Step != resumed.Opt.Step {
		t.Fatalf("position %+v vs %+v", whole.Position, resumed.Position)
	}
	if !slices.Equal(whole.History.Points, resumed.History.Points) {
		t.Fatalf("history %+v vs %+v", whole.History.Points, resumed.History.Points)
	}
	if whole.Position.Epoch != 1 || whole.Position.StepInEpoch != 4 {
		t.Fatalf("after 11 steps of 7 per epoch: %+v", whole.Position)
	}
}

func TestSameSeedSameParameters(t *testing.T) {
	c, d := tinyConfig(), syntheticData()
	a, b := mustTrainer(t, c, d), mustTrainer(t, c, d)
	steps(t, a, 4)
	steps(t, b, 4)
	if !sameBits(a.Model.Params, b.Model.Params) {
		t.Fatal("same seed, different parameters after 4 steps")
	}
	c.Seed++
	other := mustTrainer(t, c, d)
	steps(t, other, 4)
	if sameBits(a.Model.Params, other.Model.Params) {
		t.Fatal("a different seed gave the same parameters")
	}
}

func TestEveryTrainingSampleOncePerEpoch(t *testing.T) {
	c, d := tinyConfig(), syntheticData()
	tr := mustTrainer(t, c, d)
	spe := tr.StepsPerEpoch()
	for epoch := 0; epoch < 2; epoch++ {
		seen := make([]int, d.Train.N)
		for s := 0; s < spe; s++ {
			for _, i := range tr.BatchIndices(Position{Epoch: epoch, StepInEpoch: s}) {
				seen[i]++
			}
		}
		for i, k := range seen {
			if k != 1 {
				t.Fatalf("epoch %d: sample %d used %d times", epoch, i, k)
			}
		}
	}
}

func TestShardsCoverTheBatch(t *testing.T) {
	for n := 0; n <= 20; n++ {
		for ranks := 1; ranks <= 8; ranks++ {
			next := 0
			for r := 0; r < ranks; r++ {
				lo, hi := Shard(n, r, ranks)
				if lo != next || hi < lo || hi-lo > n/ranks+1 || hi-lo < n/ranks {
					t.Fatalf("n=%d ranks=%d r=%d: [%d,%d) after %d", n, ranks, r, lo, hi, next)
				}
				next = hi
			}
			if next != n {
				t.Fatalf("n=%d ranks=%d: shards end at %d", n, ranks, next)
			}
		}
	}
}

func TestShardGradientsSumToTheBatchGradient(t *testing.T) {
	c, d := tinyConfig(), syntheticData()
	tr := mustTrainer(t, c, d)
	idx := slices.Clone(tr.BatchIndices(Position{}))
	whole := tr.ComputeGradient(idx, 0)
	full := slices.Clone(tr.Grad)
	sum := make([]float32, len(full))
	var ll float64
	for r := 0; r < 3; r++ {
		lo, hi := Shard(len(idx), r, 3)
		ll += tr.ComputeGradient(idx[lo:hi], 0)
		for i, g := range tr.Grad {
			sum[i] += g
		}
	}
	if math.Abs(ll-whole) > 1e-6*math.Abs(whole) {
		t.Fatalf("shard log-likelihoods sum to %v, batch %v", ll, whole)
	}
	for i := range full {
		if math.Abs(float64(sum[i]-full[i])) > 1e-3*(1+math.Abs(float64(full[i]))) {
			t.Fatalf("param %d: shards sum to %v, batch gradient %v", i, sum[i], full[i])
		}
	}
}

func TestCorruptStateIsRefused(t *testing.T) {
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	blob, err := tr.State().Encode()
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { b[len(b)/2] ^= 1; return b },
		"truncated":    func(b []byte) []byte { return b[:len(b)-100] },
		"bad magic":    func(b []byte) []byte { b[0] = 'X'; return b },
	} {
		_, err := ReadState(bytes.NewReader(damage(slices.Clone(blob))))
		if !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: err %v, want ErrCorruptState", name, err)
		}
	}
	if _, err := DecodeState(blob); err != nil {
		t.Fatalf("intact state refused: %v", err)
	}
}

func TestSaveAndLoadFile(t *testing.T) {
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	steps(t, tr, 2)
	path := t.TempDir() + "/state.nice"
	if err := tr.State().SaveFile(path); err != nil {
		t.Fatal(err)
	}
	s, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !sameBits(s.Params, tr.Model.Params) || s.Position != tr.Position {
		t.Fatal("loaded state differs from the saved one")
	}
}

func TestEncodedLenAndDigest(t *testing.T) {
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	steps(t, tr, 3)
	s := tr.View()
	blob, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.EncodedLen(); err != nil || int64(len(blob)) != n {
		t.Fatalf("EncodedLen %d (%v), encoding has %d bytes", n, err, len(blob))
	}
	var cp State
	tr.CopyInto(&cp)
	if cp.Digest() != s.Digest() {
		t.Fatal("a copy of the state has another digest")
	}
	cp.M[7] += 1
	if cp.Digest() == s.Digest() {
		t.Fatal("changing a moment did not change the digest")
	}
}

// Before: Encode panicked on a NaN in the header (a score taken on a
// worker's word), crashing the coordinator's snapshot goroutine.
func TestEncodeRefusesNonFiniteHeader(t *testing.T) {
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	s := tr.State()
	s.History.Epochs = append(s.History.Epochs, EpochResult{Epoch: 1, TestLL: math.NaN()})
	if _, err := s.Encode(); err == nil {
		t.Errorf("Encode of a state with a NaN score: no error")
	}
	if _, err := s.EncodedLen(); err == nil {
		t.Errorf("EncodedLen of a state with a NaN score: no error")
	}
	s.M = s.M[:1]
	if _, err := s.Encode(); err == nil {
		t.Errorf("Encode of a state with mismatched buffers: no error")
	}
}

// TestDigestIsTheFusedPass: workers and the replay take a reduced
// gradient's digest from Adam's fused pass; the coordinator compares it
// with other members' and the ledger keeps it, so it must be Digest.
func TestDigestIsTheFusedPass(t *testing.T) {
	g := make([]float32, 300007) // over pieceBytes: Digest goes piece by piece
	if 4*len(g) <= pieceBytes {
		t.Fatalf("%d floats fit in one piece of %d bytes", len(g), pieceBytes)
	}
	for i := range g {
		g[i] = float32(math.Sin(float64(i))) * 7
	}
	a := flow.NewAdam(flow.DefaultAdam(), len(g))
	norm, d := a.GradNormDigest(g)
	if want := Digest(g); d != want {
		t.Errorf("fused digest %08x, Digest %08x", d, want)
	}
	if want := a.GradNorm(g); norm != want {
		t.Errorf("fused norm %v, GradNorm %v", norm, want)
	}
}
