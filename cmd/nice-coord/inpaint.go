package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/plot"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

func init() {
	register("inpaint", command{summary: "fill masked pixels of test digits by gradient ascent on the model's likelihood", run: runInpaint})
}

func runInpaint(ctx context.Context, args []string) error {
	kinds := make([]string, len(train.MaskKinds))
	for i, k := range train.MaskKinds {
		kinds[i] = string(k)
	}
	fs := newFlagSet("inpaint", "[--addr host:port | --state-dir DIR | --state FILE] [flags]",
		"Inpainting as in the NICE paper (section 5.2): hides part of each of --n test digits (--mask), starts\n"+
			"the hidden pixels from uniform noise and climbs the model's log-likelihood over them by projected\n"+
			"gradient ascent (the observed pixels stay fixed; each step is clamped to [0, 1]). Writes a PNG of\n"+
			"rows of originals, masked starts and results, and prints the mean log-likelihood of the masked start\n"+
			"and of the result and the mean squared error against the originals over the hidden pixels. The model\n"+
			"comes from a running coordinator (--addr), a stopped one's state folder (--state-dir), or a file.")
	src := addSourceFlags(fs)
	mask := fs.String("mask", "bottom", "pixels to hide: "+strings.Join(kinds, ", "))
	fraction := fs.Float64("fraction", 0.5, "fraction of pixels hidden by --mask random")
	side := fs.Int("side", 14, "side in pixels of the centred square hidden by --mask square")
	n := fs.Int("n", 10, "number of test digits, chosen at random with --seed")
	steps := fs.Int("steps", 500, "gradient ascent steps")
	lr := fs.Float64("lr", 0.01, "first step size: a step moves each hidden pixel by about lr (with --normalise=false: adds lr x d log p(x)/dx); then each digit's step grows 1.1x after a step that raised its log-likelihood, and one that lowered it is undone and halved")
	normalise := fs.Bool("normalise", true, "divide each pixel's gradient by the root mean square of its gradients so far (as RMSProp), so a step moves each hidden pixel by about lr (false: the paper's plain gradient ascent, where lr multiplies the gradient)")
	seed := fs.Uint64("seed", 1, "seed of the digits chosen, the random mask and the starting noise")
	cols := fs.Int("cols", 10, "digits per row of the PNG")
	out := fs.String("out", "inpaint.png", "PNG file to write")
	data := fs.String("data", "", "folder with the four MNIST IDX .gz files (default: found automatically)")
	threads := fs.Int("threads", 0, "BLAS threads (0: the BLAS default)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	mk := train.Mask{Kind: train.MaskKind(*mask), Fraction: *fraction, Side: *side}
	if err := mk.Validate(mnist.Cols); err != nil {
		return fmt.Errorf("--mask: %w", err)
	}
	ic := train.InpaintConfig{Steps: *steps, LR: *lr, Seed: *seed, Normalise: *normalise}
	if err := ic.Validate(); err != nil {
		return fmt.Errorf("--steps/--lr: %w", err)
	}
	if *n < 1 || *cols < 1 {
		return fmt.Errorf("--n %d and --cols %d must be at least 1", *n, *cols)
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
	if m.Config.Dim != mnist.Pixels {
		return fmt.Errorf("%s: a model of %d dimensions, MNIST digits have %d", l.from, m.Config.Dim, mnist.Pixels)
	}
	c := l.saved.Model.Config
	c.Validation = false // inpaint test digits
	d, err := loadData(*data, c)
	if err != nil {
		return err
	}
	if *n > d.Eval.N {
		return fmt.Errorf("--n %d: the test set has %d digits", *n, d.Eval.N)
	}
	rng := rand.New(rand.NewPCG(*seed, 0x64696769)) // "digi"
	idx := make([]int32, *n)
	for i, j := range rng.Perm(d.Eval.N)[:*n] {
		idx[i] = int32(j)
	}
	D := m.Config.Dim
	orig := make([]float32, *n*D)
	d.Eval.FillBatch(orig, idx, c.EvalSeed, 0)
	missing, err := mk.Missing(*n, mnist.Cols, rng)
	if err != nil {
		return err
	}
	x := append([]float32(nil), orig...)
	ws := flow.NewWorkspace(m.Config, min(*n, 100))
	res, err := train.Inpaint(m, ws, x, missing, *n, ic)
	if err != nil {
		return err
	}
	// The masked start, drawn again from the same noise Inpaint used.
	start := append([]float32(nil), orig...)
	if _, err := train.Inpaint(m, ws, start, missing, *n, train.InpaintConfig{Steps: 0, LR: *lr, Seed: *seed}); err != nil {
		return err
	}
	fmt.Printf("%d test digits, mask %s, %d steps, the first of size %g\n", *n, describeMask(mk), *steps, *lr)
	fmt.Printf("mean log-likelihood: masked start %.2f nats, inpainted %.2f nats (originals %.2f)\n",
		train.Mean(res.Start), train.Mean(res.Final), meanLL(m, ws, orig, *n))
	fmt.Printf("mean squared error over the hidden pixels: masked start %.4f, inpainted %.4f\n",
		train.MaskedMSE(start, orig, missing), train.MaskedMSE(x, orig, missing))
	fmt.Println(stepSummary(res.StepSize, *lr))
	rowsOut, tiles := inpaintTiles(orig, start, x, *n, *cols, D)
	if err := train.WritePNG(*out, func(f *os.File) error { return plot.SampleGrid(f, tiles, rowsOut, *cols) }); err != nil {
		return err
	}
	fmt.Printf("wrote %s: for each row of up to %d digits, the originals, the masked starts and the results\n", *out, *cols)
	return nil
}

func describeMask(m train.Mask) string {
	switch m.Kind {
	case train.MaskRandom:
		return fmt.Sprintf("random (%.0f%% of the pixels)", 100*m.Fraction)
	case train.MaskSquare:
		return fmt.Sprintf("square (%dx%d, centred)", m.Side, m.Side)
	}
	return string(m.Kind) + " half"
}

// meanLL is the mean log-likelihood of the n images of x.
func meanLL(m *flow.Model, ws *flow.Workspace, x []float32, n int) float64 {
	D := m.Config.Dim
	var sum float64
	for lo := 0; lo < n; lo += ws.Max {
		b := min(ws.Max, n-lo)
		sum += m.LogLikelihood(ws, x[lo*D:(lo+b)*D], b, nil)
	}
	return sum / float64(n)
}

// inpaintTiles lays out originals, starts and results in bands of three
// rows of cols digits (the last band padded with black tiles).
func inpaintTiles(orig, start, result []float32, n, cols, D int) (rows int, tiles []float32) {
	bands := (n + cols - 1) / cols
	tiles = make([]float32, bands*3*cols*D)
	for b := 0; b < bands; b++ {
		for r, src := range [][]float32{orig, start, result} {
			for c := 0; c < cols; c++ {
				i := b*cols + c
				if i >= n {
					break
				}
				t := (b*3+r)*cols + c
				copy(tiles[t*D:(t+1)*D], src[i*D:(i+1)*D])
			}
		}
	}
	return bands * 3, tiles
}

// stepSummary says where the digits' adaptive step sizes ended, against
// the first: a sharp model's steep background takes them far below it.
func stepSummary(sizes []float64, first float64) string {
	s := slices.Sorted(slices.Values(sizes))
	if len(s) == 0 {
		return ""
	}
	return fmt.Sprintf("step sizes at the end: median %.3g (from %.3g to %.3g), the first %.3g", s[len(s)/2], s[0], s[len(s)-1], first)
}
