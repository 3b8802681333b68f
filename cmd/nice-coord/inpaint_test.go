package main

import (
	"context"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nice-flow/nice/internal/plot"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

// inpaint and eval run end to end on an export of a tiny model and the
// real test set: the PNG holds three rows (originals, masked starts,
// results) per band of digits.
func TestInpaintAndEvalCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("loads MNIST")
	}
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	statePath, modelPath := filepath.Join(dir, "state.nice"), filepath.Join(dir, "model.nice")
	if err := trained(t, 3).State().SaveFile(statePath); err != nil {
		t.Fatal(err)
	}
	if err := runExport(ctx, []string{"--state", statePath, "--out", modelPath}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "inpaint.png")
	for _, mask := range []string{"left", "right", "top", "bottom", "random", "square"} {
		if err := runInpaint(ctx, []string{"--state", modelPath, "--mask", mask, "--n", "5", "--cols", "3", "--steps", "3", "--out", out}); err != nil {
			t.Fatalf("--mask %s: %v", mask, err)
		}
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	const pitch = plot.TileSide + plot.Gap
	// 5 digits in rows of 3: two bands of three rows.
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != plot.Scale*(3*pitch+plot.Gap) || h != plot.Scale*(6*pitch+plot.Gap) {
		t.Fatalf("PNG of %dx%d pixels", w, h)
	}
	wantErr(t, runInpaint(ctx, []string{"--state", modelPath, "--mask", "diagonal"}), "--mask", `"diagonal"`, "square")
	wantErr(t, runInpaint(ctx, []string{"--state", modelPath, "--mask", "random", "--fraction", "1.5"}), "fraction", "between 0 and 1")
	wantErr(t, runInpaint(ctx, []string{"--state", modelPath, "--lr", "0"}), "--lr", "positive")
	for _, set := range []string{"", "train"} {
		if err := runEval(ctx, []string{"--state", modelPath, "--n", "50", "--set", set}); err != nil {
			t.Fatalf("eval --set %q: %v", set, err)
		}
	}
	wantErr(t, runEval(ctx, []string{"--state", modelPath, "--set", "training"}), "--set", `"training"`, "test, validation or train")
}

// train --resume-from refuses what it cannot continue, before loading data.
func TestTrainResumeFromErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	statePath, modelPath := filepath.Join(dir, "state.nice"), filepath.Join(dir, "model.nice")
	if err := trained(t, 1).State().SaveFile(statePath); err != nil {
		t.Fatal(err)
	}
	if err := runExport(ctx, []string{"--state", statePath, "--out", modelPath}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, runTrain(ctx, []string{"--out", dir, "--resume-from", statePath}), "already holds a run", "another --out")
	wantErr(t, runTrain(ctx, []string{"--out", t.TempDir(), "--resume", "--resume-from", statePath}), "choose one")
	wantErr(t, runTrain(ctx, []string{"--out", t.TempDir(), "--resume-from", modelPath}), "exported model", "no optimiser state")
	wantErr(t, runServe(ctx, []string{"--state-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--http", "", "--gossip", "", "--resume-from", modelPath}),
		"exported model", "no optimiser state")
}

func TestStepSummary(t *testing.T) {
	got := stepSummary([]float64{0.04, 0.0001, 0.002}, 0.01)
	if want := "step sizes at the end: median 0.002 (from 0.0001 to 0.04), the first 0.01"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := stepSummary(nil, 1); got != "" {
		t.Errorf("no digits: %q", got)
	}
}

// tinyTrainArgs skips without real MNIST, and otherwise gives train's
// arguments for a tiny, quiet run into a new --out folder.
func tinyTrainArgs(t *testing.T) (ctx context.Context, out string, args []string) {
	t.Helper()
	if _, err := mnist.FindDir(""); err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	out = t.TempDir()
	return context.Background(), out, []string{"--out", out, "--hidden", "8", "--layers", "1", "--progress", "1h", "--samples", "0"}
}

// TestTrainResumeKeepsItsDecay: the decay follows --epochs when not given, so
// resuming with more epochs and a trajectory flag at its saved value is no
// change of trajectory, while another value of it is refused by name.
func TestTrainResumeKeepsItsDecay(t *testing.T) {
	ctx, out, tiny := tinyTrainArgs(t)
	if err := runTrain(ctx, append(tiny, "--epochs", "1", "--max-steps", "2")); err != nil {
		t.Fatal(err)
	}
	if err := runTrain(ctx, append(tiny, "--resume", "--epochs", "2", "--lr", "2e-3", "--max-steps", "1")); err != nil {
		t.Fatalf("resumed with more epochs and the saved --lr: %v", err)
	}
	s, err := train.LoadFile(filepath.Join(out, "state.nice"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Config.DecayEpochs != 1 || s.Config.Epochs != 2 || s.Position.Step != 3 {
		t.Fatalf("after the resume: decay over %d epochs, %d epochs, step %d; want 1, 2, 3", s.Config.DecayEpochs, s.Config.Epochs, s.Position.Step)
	}
	wantErr(t, runTrain(ctx, append(tiny, "--resume", "--lr", "3e-3")), "--lr differs from the saved run's setting")
}

// A named choice given a name it does not know is refused with the names it
// knows, before anything is loaded.
func TestTrainChoiceErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ flag, value, want string }{
		{"init", "ones", "want zero or data"},
		{"decay-shape", "step", "want cosine or linear"},
		{"gradient-wire", "fp16", "want fp32 or bf16"},
	} {
		wantErr(t, runTrain(ctx, []string{"--out", t.TempDir(), "--" + tc.flag, tc.value}), "--"+tc.flag, `"`+tc.value+`"`, tc.want)
	}
}

func TestDescribeSchedule(t *testing.T) {
	c := train.DefaultConfig()
	if got, want := describeSchedule(c), " (warm-up 200 steps, cosine decay to 0 over 24 epochs, weight decay 0.3)"; got != want {
		t.Errorf("default: %q, want %q", got, want)
	}
	c.DecayShape, c.FinalLR, c.Adam.WeightDecay, c.Adam.ClipNorm, c.Adam.ScaleLR = train.DecayLinear, 0.1, 0.5, 3, 5e-3
	if got, want := describeSchedule(c), " (warm-up 200 steps, linear decay to 0.0002 over 24 epochs, log-scales at 0.005, weight decay 0.5, clipped to norm 3)"; got != want {
		t.Errorf("every part: %q, want %q", got, want)
	}
	if got := describeSchedule(train.PaperConfig()); got != "" {
		t.Errorf("the paper's constant rate: %q, want nothing", got)
	}
}

// train keeps the model of its highest-scoring epoch in best.nice, an
// export that the model commands read.
func TestTrainKeepsTheBestEpoch(t *testing.T) {
	ctx, out, tiny := tinyTrainArgs(t)
	if err := runTrain(ctx, append(tiny, "--epochs", "2")); err != nil {
		t.Fatal(err)
	}
	s, err := train.LoadFile(filepath.Join(out, "state.nice"))
	if err != nil {
		t.Fatal(err)
	}
	best, err := train.LoadSaved(filepath.Join(out, bestFile))
	if err != nil {
		t.Fatal(err)
	}
	if best.State != nil {
		t.Fatal("best.nice holds Adam's moments: want the model alone")
	}
	eps := s.History.Epochs
	b := bestEpoch(eps)
	if len(eps) != 2 || best.Model.Position.Epoch != eps[b].Epoch {
		t.Fatalf("best.nice is at epoch %d; the run's scores %+v", best.Model.Position.Epoch, eps)
	}
	if b == len(eps)-1 && !slices.Equal(best.Model.Params, s.Params) {
		t.Fatal("the last epoch scored best, and best.nice holds other parameters")
	}
	if err := runEval(ctx, []string{"--state", filepath.Join(out, bestFile), "--n", "20"}); err != nil {
		t.Fatal(err)
	}
}

func TestBestEpoch(t *testing.T) {
	e := func(lls ...float64) []train.EpochResult {
		var out []train.EpochResult
		for i, ll := range lls {
			out = append(out, train.EpochResult{Epoch: i + 1, TestLL: ll})
		}
		return out
	}
	for _, tc := range []struct {
		eps  []train.EpochResult
		want int
	}{
		{nil, -1},
		{e(5), 0},
		{e(5, 7, 6), 1},
		{e(5, 7, 7), 1},
		{e(5, 6, 8), 2},
	} {
		if got := bestEpoch(tc.eps); got != tc.want {
			t.Errorf("%+v: %d, want %d", tc.eps, got, tc.want)
		}
	}
}
