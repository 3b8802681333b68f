package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/plot"
	"github.com/nice-flow/nice/train"
)

func init() {
	register("sample", command{summary: "draw samples from a saved model into a PNG grid", run: runSample})
	register("eval", command{summary: "score a saved model on the MNIST test (or validation) set", run: runEval})
}

func runSample(ctx context.Context, args []string) error {
	fs := newFlagSet("sample", "[--addr host:port | --state-dir DIR | --state FILE] [flags]",
		"Draws samples x = f⁻¹(h), h from the prior, from a model and writes them as a PNG grid. The model\n"+
			"comes from a running coordinator (--addr), a stopped one's state folder (--state-dir), or a file\n"+
			"(--state: a state.nice or an exported model).")
	src := addSourceFlags(fs)
	n := fs.Int("n", 100, "number of samples")
	cols := fs.Int("cols", 10, "samples per row of the grid")
	seed := fs.Uint64("seed", 1, "seed of the prior draws")
	temp := fs.Float64("temperature", 1, "scale of the prior the draws come from, in (0, 10]: below 1 gives cleaner digits and less variety")
	out := fs.String("out", "samples.png", "PNG file to write")
	threads := fs.Int("threads", 0, "BLAS threads (0: the BLAS default)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *n < 1 || *cols < 1 {
		return fmt.Errorf("--n %d and --cols %d must be at least 1", *n, *cols)
	}
	if !(*temp > 0 && *temp <= 10) {
		return fmt.Errorf("--temperature %v: use a number above 0 and at most 10 (1: the prior itself; 0.7 is a common choice)", *temp)
	}
	noteBLAS(*threads)
	l, err := src.load(ctx)
	if err != nil {
		return err
	}
	fmt.Println(l.describe())
	m, err := l.model()
	if err != nil {
		return err
	}
	rows := (*n + *cols - 1) / *cols
	ws := flow.NewWorkspace(m.Config, min(256, rows**cols))
	xs := train.SamplesAt(m, ws, rows**cols, *seed, *temp)
	if err := train.WritePNG(*out, func(f *os.File) error { return plot.SampleGrid(f, xs, rows, *cols) }); err != nil {
		return err
	}
	fmt.Printf("wrote %d samples (temperature %g) to %s\n", rows**cols, *temp, *out)
	return nil
}

func runEval(ctx context.Context, args []string) error {
	fs := newFlagSet("eval", "[--addr host:port | --state-dir DIR | --state FILE] [flags]",
		"Scores a model: mean log-likelihood in nats per image and bits/dim = 8 - LL/(784 ln 2), with the\n"+
			"run's fixed evaluation noise. The model comes from a running coordinator (--addr), a stopped one's\n"+
			"state folder (--state-dir), or a file (--state: a state.nice or an exported model).")
	src := addSourceFlags(fs)
	data := fs.String("data", "", "folder with the four MNIST IDX .gz files (default: found automatically)")
	set := fs.String("set", "", "test, validation, or train (the images the run trained on, to see how far it overfits; default: what the run scored on)")
	limit := fs.Int("n", 0, "score only the first n images (0: all)")
	threads := fs.Int("threads", 0, "BLAS threads (0: the BLAS default)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	switch *set {
	case "", "test", "validation", "train":
	default:
		return fmt.Errorf("--set %q: use test, validation or train", *set)
	}
	noteBLAS(*threads)
	l, err := src.load(ctx)
	if err != nil {
		return err
	}
	fmt.Println(l.describe())
	m, err := l.model()
	if err != nil {
		return err
	}
	c := l.saved.Model.Config
	switch *set {
	case "":
	case "test":
		c.Validation = false
	case "validation":
		c.Validation = true
	}
	d, err := loadData(*data, c)
	if err != nil {
		return err
	}
	if *set == "train" {
		d.Eval, d.EvalName = d.Train, "training"
	}
	n := d.Eval.N
	if *limit > 0 && *limit < n {
		n = *limit
	}
	ws := flow.NewWorkspace(m.Config, 256)
	x := make([]float32, 256*m.Config.Dim)
	ll := train.EvalSum(m, ws, x, d.Eval, 0, n, c.EvalSeed) / float64(n)
	fmt.Printf("step %d, %s set (%d images): log-likelihood %.2f nats per image, %.4f bits/dim\n",
		l.saved.Model.Position.Step, d.EvalName, n, ll, train.BitsPerDim(ll, m.Config.Dim))
	return nil
}
