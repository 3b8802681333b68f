package replay

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

// The flow package's pool of step threads lives as long as the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nice-flow/nice/flow.(*pool).worker"))
}

func TestReadLedger(t *testing.T) {
	line := func(step int64) string {
		return `{"generation":1,"step":` + itoa(step) + `,"epoch":0,"step_in_epoch":` + itoa(step) + `,"batch":10,"shards":[{"Worker":"a","Lo":0,"Hi":10}]}`
	}
	// A resumed coordinator commits step 1 again: it supersedes 1 and 2.
	ledger := strings.Join([]string{line(0), line(1), line(2), line(1), line(2), line(3)}, "\n") + "\n"
	steps, err := ReadLedger(strings.NewReader(ledger + `{"generation":1,"st`))
	if err != nil {
		t.Fatalf("a torn last line: %v", err)
	}
	if len(steps) != 4 || steps[3].Step != 3 || steps[1].Shards[0].Hi != 10 {
		t.Fatalf("got %+v", steps)
	}
	for _, tc := range []struct{ ledger, want string }{
		{line(0) + "\n" + line(2) + "\n", "line 2 commits step 2 after step 0: steps are missing"},
		{line(0) + "\n{oops\n" + line(1) + "\n", "ledger line 2"},
		{line(-1) + "\n", "commits step -1"},
	} {
		if _, err := ReadLedger(strings.NewReader(tc.ledger)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ledger %q: error %v, want one saying %q", tc.ledger, err, tc.want)
		}
	}
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func syntheticSet(n int, seed uint64) *mnist.Set {
	rng := rand.New(rand.NewPCG(seed, 0))
	s := &mnist.Set{N: n, Images: make([]uint8, n*mnist.Pixels), Labels: make([]uint8, n)}
	for i := range s.Images {
		s.Images[i] = uint8(rng.IntN(256))
	}
	return s
}

func trainer(t *testing.T) *train.Trainer {
	t.Helper()
	c := train.DefaultConfig()
	c.Model = flow.Config{Dim: mnist.Pixels, Couplings: 4, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	c.Batch = 16
	tr, err := train.New(c, train.Data{Train: syntheticSet(40, 1), Eval: syntheticSet(8, 2), EvalName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// steps is the schedule of k steps, each cut into n shards as a ring of n
// members cuts it.
func steps(tr *train.Trainer, k, n int) []Step {
	var out []Step
	pos := tr.Position
	for range k {
		lo, hi := train.BatchBounds(tr.Data.Train.N, tr.Config.Batch, pos.StepInEpoch)
		s := Step{Step: pos.Step, Epoch: pos.Epoch, StepInEpoch: pos.StepInEpoch, Batch: hi - lo}
		for r := range n {
			slo, shi := train.Shard(hi-lo, r, n)
			s.Shards = append(s.Shards, Shard{Lo: slo, Hi: shi})
		}
		out = append(out, s)
		pos = pos.Next(tr.StepsPerEpoch())
	}
	return out
}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = max(d, math.Abs(float64(a[i])-float64(b[i])))
	}
	return d
}

// One shard per step is the single process's step, bit for bit, across an
// epoch's end and its short last batch; more shards sum the same gradient
// in another order.
func TestReplayEqualsTheSingleProcess(t *testing.T) {
	want := trainer(t)
	const k = 7 // 3 steps an epoch (16, 16, 8 samples)
	for range k {
		if _, err := want.Step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{1, 2, 3} {
		tr := trainer(t)
		r := New(tr)
		for _, s := range steps(tr, k, n) {
			if err := r.Step(t.Context(), s); err != nil {
				t.Fatal(err)
			}
		}
		r.Close()
		if tr.Position != want.Position {
			t.Fatalf("%d shards: at %+v, the single process at %+v", n, tr.Position, want.Position)
		}
		d := maxDiff(tr.Model.Params, want.Model.Params)
		if n == 1 && d != 0 {
			t.Fatalf("one shard: parameters differ from the single process by %g", d)
		}
		if d > 1e-5 {
			t.Fatalf("%d shards: parameters differ from the single process by %g", n, d)
		}
		t.Logf("%d shards: largest difference from the single process %.3g", n, d)
	}
}

func TestReplayRefusesAStepThatIsNotNext(t *testing.T) {
	tr := trainer(t)
	r := New(tr)
	defer r.Close()
	s := steps(tr, 2, 2)
	for _, tc := range []struct {
		step Step
		want string
	}{
		{s[1], "ledger step 1 is at"},
		{Step{Batch: 16}, "0 shards"},
		{Step{Batch: 12, Shards: s[0].Shards}, "the schedule's batch has 16"},
		{Step{Batch: 16, Shards: []Shard{{Lo: 0, Hi: 17}}}, "shard 0 is [0, 17)"},
		{Step{Batch: 16, Shards: s[0].Shards, ParamsDigest: 7}, "step 0: the parameters the step starts from differ from the run's (the run recorded digest 00000007"},
		{Step{Batch: 16, Shards: s[0].Shards, SumLL: -1}, "step 0: the log-likelihoods of the batch differ from the run's (the run recorded -1,"},
		{Step{Batch: 16, Shards: s[0].Shards, GradDigest: 7}, "step 0: the reduced gradients differ from the run's (the run recorded digest 00000007"},
	} {
		if err := r.Step(t.Context(), tc.step); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("step %+v: error %v, want one saying %q", tc.step, err, tc.want)
		}
	}
	if tr.Position.Step != 0 {
		t.Fatalf("a refused step moved the trainer to %+v", tr.Position)
	}
}

// SameFloats compares what the next steps depend on, SameState also the
// training-loss record; each names the first difference.
func TestSameStateAndSameFloats(t *testing.T) {
	tr := trainer(t)
	if _, err := tr.Step(); err != nil {
		t.Fatal(err)
	}
	a := tr.State()
	clone := func() *train.State {
		b := *a
		b.Params, b.M, b.V = slices.Clone(a.Params), slices.Clone(a.M), slices.Clone(a.V)
		b.History.Points = slices.Clone(a.History.Points)
		return &b
	}
	if err := SameState(a, clone()); err != nil {
		t.Fatalf("a copy: %v", err)
	}
	loss := clone()
	loss.LossSum = math.Nextafter(loss.LossSum, math.Inf(1))
	if err := SameFloats(a, loss); err != nil {
		t.Fatalf("another loss sum, SameFloats: %v", err)
	}
	if err := SameState(a, loss); err == nil || !strings.Contains(err.Error(), "training loss") {
		t.Fatalf("another loss sum, SameState: %v", err)
	}
	for _, c := range []struct {
		what string
		edit func(*train.State)
	}{
		{"parameter 3 of", func(s *train.State) { s.Params[3] = math.Float32frombits(math.Float32bits(s.Params[3]) ^ 1<<31) }},
		{"second moment 0 of", func(s *train.State) { s.V[0] = math.Float32frombits(math.Float32bits(s.V[0]) ^ 1) }},
		{"Adam step", func(s *train.State) { s.AdamStep++ }},
	} {
		b := clone()
		c.edit(b)
		for name, same := range map[string]func(a, b *train.State) error{"SameFloats": SameFloats, "SameState": SameState} {
			if err := same(a, b); err == nil || !strings.Contains(err.Error(), c.what) {
				t.Errorf("%s after an edit of %s: %v", name, c.what, err)
			}
		}
	}
}

// The coordinator's ledger lines carry each shard's numerics, ReadLedger
// reads them, and CheckNumerics refuses a shard of another build's numerics
// by step and worker, and counts shards that do not say theirs.
func TestCheckNumerics(t *testing.T) {
	var ledger strings.Builder
	for step, shards := range [][]coordinator.Shard{
		{{Worker: "a", Lo: 0, Hi: 5, Numerics: train.Numerics}, {Worker: "b", Lo: 5, Hi: 10, Numerics: train.Numerics}},
		{{Worker: "a", Lo: 0, Hi: 10}},
		{{Worker: "a", Lo: 0, Hi: 5, Numerics: train.Numerics}, {Worker: "c", Lo: 5, Hi: 10, Numerics: train.Numerics + 1}},
	} {
		b, err := json.Marshal(coordinator.LedgerLine{Generation: 1, Step: int64(step), StepInEpoch: step, Batch: 10, Shards: shards})
		if err != nil {
			t.Fatal(err)
		}
		ledger.Write(append(b, '\n'))
	}
	steps, err := ReadLedger(strings.NewReader(ledger.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := steps[0].Shards[1].Numerics; got != train.Numerics {
		t.Fatalf("ReadLedger gives numerics %d for a shard the coordinator wrote with %d", got, train.Numerics)
	}
	unknown, err := CheckNumerics(steps[:2])
	if err != nil || unknown != 1 {
		t.Fatalf("steps 0 and 1: %d shards unknown, error %v; want 1 and none", unknown, err)
	}
	_, err = CheckNumerics(steps)
	var ne *NumericsError
	if !errors.As(err, &ne) || ne.Step != 2 || ne.Worker != "c" || ne.Numerics != train.Numerics+1 {
		t.Fatalf("CheckNumerics of all steps: %v, want a NumericsError for step 2, worker c", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "verify it with a build of numerics") {
		t.Errorf("the error does not say what to do: %s", msg)
	}
}
