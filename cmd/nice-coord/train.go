package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

func init() {
	register("train", command{summary: "train a NICE model on MNIST in this process", run: runTrain})
}

// trainFlags are the settings shared by train and the distributed commands.
type trainFlags struct {
	cfg     train.Config
	prior   string
	dataDir string
	wire    string
	init    string
	threads int
	// decayShape is --decay-shape as given (cosine or linear).
	decayShape string
}

func addTrainFlags(fs *flag.FlagSet, tf *trainFlags) {
	c := &tf.cfg
	*c = train.DefaultConfig()
	fs.StringVar(&tf.dataDir, "data", "", "folder with the four MNIST IDX .gz files (default: found automatically, see README)")
	fs.IntVar(&c.Epochs, "epochs", c.Epochs, "epochs to train in all")
	fs.IntVar(&c.Batch, "batch", c.Batch, "global batch size")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the initial parameters, permutations and dequantisation noise")
	fs.Float64Var(&c.Adam.LR, "lr", c.Adam.LR, "Adam learning rate")
	fs.Float64Var(&c.Adam.Beta1, "beta1", c.Adam.Beta1, "Adam beta1")
	fs.Float64Var(&c.Adam.Beta2, "beta2", c.Adam.Beta2, "Adam beta2")
	fs.Float64Var(&c.Adam.Eps, "eps", c.Adam.Eps, "Adam epsilon")
	fs.Float64Var(&c.Adam.ClipNorm, "clip", c.Adam.ClipNorm, "clip the mean gradient to this global L2 norm (0: off)")
	fs.Float64Var(&c.Adam.ScaleLR, "scale-lr", c.Adam.ScaleLR, "Adam learning rate of the log-scales s (0: --lr)")
	fs.Float64Var(&c.Adam.WeightDecay, "weight-decay", c.Adam.WeightDecay, "shrink the couplings' parameters (not the log-scales) by lr times this every step, apart from Adam's step (decoupled, as AdamW; 0: off)")
	fs.IntVar(&c.WarmupSteps, "warmup", c.WarmupSteps, "raise the learning rate linearly over this many first steps (0: none)")
	c.DecayEpochs = -1 // resolved to --epochs by config
	fs.IntVar(&c.DecayEpochs, "decay-epochs", c.DecayEpochs, "lower the learning rate along a half cosine from step 0 to --final-lr of it at the end of this epoch, and hold it there (-1: --epochs; 0: no decay)")
	fs.Float64Var(&c.FinalLR, "final-lr", c.FinalLR, "the fraction of --lr the decay ends at")
	fs.StringVar(&tf.decayShape, "decay-shape", "cosine", "the decay's curve from --lr to --final-lr: cosine (a half cosine) or linear")
	initName := "zero"
	if c.Init == train.InitData {
		initName = "data"
	}
	fs.StringVar(&tf.init, "init", initName, "how the log-scales s start: data (fitted to the first images' log-likelihood, dimension by dimension) or zero (the paper's)")
	fs.BoolVar(&c.IdentityStart, "identity-start", c.IdentityStart, "zero each coupling's output layer at the start, so the couplings begin as the identity")
	fs.IntVar(&c.InitSamples, "init-samples", c.InitSamples, "images --init data fits the log-scales to (0: one batch)")
	fs.StringVar(&tf.prior, "prior", string(c.Model.Prior), "prior: logistic or gaussian")
	fs.IntVar(&c.Model.Couplings, "couplings", c.Model.Couplings, "additive coupling layers")
	fs.IntVar(&c.Model.Hidden, "hidden", c.Model.Hidden, "width of each hidden layer")
	fs.IntVar(&c.Model.HiddenLayers, "layers", c.Model.HiddenLayers, "hidden layers per coupling")
	fs.BoolVar(&c.Validation, "validation", c.Validation, "hold out the last 10,000 training images and score on them instead of the test set")
	fs.IntVar(&c.LogEvery, "log-every", c.LogEvery, "record the training NLL in the history every this many steps")
	fs.StringVar(&tf.wire, "gradient-wire", "fp32", "how workers send the gradient around the ring: fp32 (exact) or bf16 (rounded to bfloat16: half the bytes for slow links, and other numbers; one process sends nothing)")
	fs.IntVar(&tf.threads, "threads", 0, "BLAS threads (0: the BLAS default, all cores)")
}

// config returns the validated training configuration.
func (tf *trainFlags) config() (train.Config, error) {
	tf.cfg.Model.Prior = flow.Prior(tf.prior)
	if tf.cfg.DecayEpochs == -1 {
		tf.cfg.DecayEpochs = tf.cfg.Epochs
	}
	var err error
	if tf.cfg.Init, err = choose("init", tf.init, "zero", train.InitZero, "data", train.InitData); err != nil {
		return tf.cfg, err
	}
	if tf.cfg.DecayShape, err = choose("decay-shape", tf.decayShape, "cosine", train.DecayCosine, "linear", train.DecayLinear); err != nil {
		return tf.cfg, err
	}
	if tf.cfg.GradientWire, err = choose("gradient-wire", tf.wire, "fp32", "", "bf16", "bf16"); err != nil {
		return tf.cfg, err
	}
	if err := tf.cfg.Validate(); err != nil {
		return tf.cfg, err
	}
	return tf.cfg, nil
}

// choose maps the value given to flag name to its configuration value:
// pairs lists each accepted name and its value, the first the default
// (which "" also selects).
func choose(name, given string, pairs ...string) (string, error) {
	if given == "" {
		return pairs[1], nil
	}
	var names []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if given == pairs[i] {
			return pairs[i+1], nil
		}
		names = append(names, pairs[i])
	}
	return "", fmt.Errorf("--%s %q: want %s", name, given, strings.Join(names, " or "))
}

// loadData finds and loads MNIST and splits it as c says.
func loadData(dir string, c train.Config) (train.Data, error) {
	dir, err := mnist.FindDir(dir)
	if err != nil {
		return train.Data{}, err
	}
	tr, te, err := mnist.Load(dir)
	if err != nil {
		return train.Data{}, err
	}
	return train.SplitData(c, tr, te), nil
}

// trajectoryFlags change the trajectory, so they must match a resumed state.
var trajectoryFlags = []string{"batch", "seed", "lr", "beta1", "beta2", "eps", "clip", "prior", "couplings", "hidden", "layers", "validation", "log-every", "gradient-wire",
	"scale-lr", "weight-decay", "warmup", "decay-epochs", "final-lr", "decay-shape", "init", "init-samples", "identity-start"}

func runTrain(ctx context.Context, args []string) error {
	fs := newFlagSet("train", "[flags]",
		"Trains NICE on MNIST in this process: a progress line every few seconds, the test set scored\n"+
			"every epoch, a sample grid and the learning curves written as PNG files every epoch, and the\n"+
			"complete state saved (every epoch, every --save-every, on Ctrl-C) so --resume continues exactly.\n"+
			"best.nice holds the model of the epoch that scored highest so far (with --validation: early\n"+
			"stopping chosen on the validation split, which sample, eval and inpaint read with --state).")
	var tf trainFlags
	addTrainFlags(fs, &tf)
	out := fs.String("out", "run", "folder for the state, sample grids and learning curves")
	resume := fs.Bool("resume", false, "continue the run saved in --out")
	resumeFrom := fs.String("resume-from", "", "continue, into an empty --out, the run of another kind of checkpoint: a coordinator's state folder (its newest checkpoint that verifies), a running coordinator's address host:port, or a state.nice")
	tlsFlags := creds.AddFlags(fs, false)
	maxSteps := fs.Int("max-steps", 0, "stop after this many steps in this invocation (0: train to the last epoch)")
	progress := fs.Duration("progress", 5*time.Second, "interval between progress lines")
	saveEvery := fs.Duration("save-every", 10*time.Minute, "also save the state this often (0: only at epoch ends and on exit)")
	nSamples := fs.Int("samples", 100, "samples in each epoch's grid (a square number fills the grid)")
	given, err := parseFlags(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg, err := tf.config()
	if err != nil {
		return err
	}
	noteBLAS(tf.threads)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("creating output folder: %w", err)
	}
	statePath := filepath.Join(*out, "state.nice")

	var tr *train.Trainer
	if *resume && *resumeFrom != "" {
		return fmt.Errorf("--resume continues the run in --out, --resume-from another one into --out: choose one")
	}
	if *resume || *resumeFrom != "" {
		var s *train.State
		if *resume {
			s, err = train.LoadFile(statePath)
			if errors.Is(err, iofs.ErrNotExist) {
				return fmt.Errorf("nothing to resume: %s does not exist (run without --resume to start)", statePath)
			}
		} else {
			if _, serr := os.Stat(statePath); serr == nil {
				return fmt.Errorf("%s already holds a run: --resume continues it; --resume-from needs another --out", statePath)
			}
			s, err = loadResumable(ctx, *resumeFrom, tlsFlags)
		}
		if err != nil {
			return err
		}
		if !given["decay-epochs"] {
			// Not set, the decay follows --epochs, which a resumed run may
			// extend: the saved run's own decay is the one to compare.
			cfg.DecayEpochs = s.Config.DecayEpochs
		}
		for _, name := range trajectoryFlags {
			if given[name] && s.Config.Hash() != cfg.Hash() {
				return fmt.Errorf("--%s differs from the saved run's setting; a resumed run keeps its configuration (drop the flag, or train into another --out)", name)
			}
		}
		if given["epochs"] {
			s.Config.Epochs = cfg.Epochs
		}
		d, err := loadData(tf.dataDir, s.Config)
		if err != nil {
			return err
		}
		if tr, err = train.Restore(s, d); err != nil {
			return err
		}
		if *resumeFrom != "" {
			// Saved at once: from here on --resume continues it.
			if err := tr.State().SaveFile(statePath); err != nil {
				return err
			}
		}
		fmt.Printf("resuming %s at epoch %d, step %d\n", statePath, s.Position.Epoch+1, s.Position.Step)
	} else {
		if _, err := os.Stat(statePath); err == nil {
			return fmt.Errorf("%s already holds a run: pass --resume to continue it, or choose another --out", statePath)
		}
		d, err := loadData(tf.dataDir, cfg)
		if err != nil {
			return err
		}
		if tr, err = train.New(cfg, d); err != nil {
			return err
		}
	}
	c := tr.Config
	fmt.Printf("NICE: %d couplings of %d x %d, %s prior, %.1f M parameters; batch %d, lr %g%s; %d training images, scoring on %d %s images; BLAS %s (%d threads)\n",
		c.Model.Couplings, c.Model.HiddenLayers, c.Model.Hidden, c.Model.Prior, float64(tr.Model.NumParams())/1e6,
		c.Batch, c.Adam.LR, describeSchedule(c), tr.Data.Train.N, tr.Data.Eval.N, tr.Data.EvalName, flow.BLASName(), flow.BLASThreads())

	loop := trainLoop{tr: tr, out: *out, statePath: statePath, samples: *nSamples}
	err = loop.run(ctx, *maxSteps, *progress, *saveEvery)
	if serr := loop.save(); serr != nil {
		return errors.Join(err, serr)
	}
	if tr.Done() {
		fmt.Printf("training complete: %d epochs, %d steps; state saved to %s\n", tr.Position.Epoch, tr.Position.Step, statePath)
	} else {
		fmt.Printf("state saved to %s at epoch %d, step %d (continue with: nice-coord train --out %s --resume)\n",
			statePath, tr.Position.Epoch+1, tr.Position.Step, *out)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// describeSchedule says, after the learning rate, what else shapes a run's
// steps: " (warm-up 200 steps, cosine decay to 0 over 24 epochs)".
func describeSchedule(c train.Config) string {
	var parts []string
	if c.WarmupSteps > 0 {
		parts = append(parts, fmt.Sprintf("warm-up %d steps", c.WarmupSteps))
	}
	if c.DecayEpochs > 0 {
		shape := cmp.Or(c.DecayShape, "cosine") // DecayCosine is ""
		parts = append(parts, fmt.Sprintf("%s decay to %g over %d epochs", shape, c.FinalLR*c.Adam.LR, c.DecayEpochs))
	}
	if c.Adam.ScaleLR > 0 {
		parts = append(parts, fmt.Sprintf("log-scales at %g", c.Adam.ScaleLR))
	}
	if c.Adam.WeightDecay > 0 {
		parts = append(parts, fmt.Sprintf("weight decay %g", c.Adam.WeightDecay))
	}
	if c.Adam.ClipNorm > 0 {
		parts = append(parts, fmt.Sprintf("clipped to norm %g", c.Adam.ClipNorm))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

type trainLoop struct {
	tr        *train.Trainer
	out       string
	statePath string
	samples   int
	// start is when this invocation began training; before the seconds of
	// training the resumed run had behind it.
	start  time.Time
	before float64
}

func (l *trainLoop) save() error { return l.tr.State().SaveFile(l.statePath) }

func (l *trainLoop) run(ctx context.Context, maxSteps int, progress, saveEvery time.Duration) error {
	tr := l.tr
	spe := tr.StepsPerEpoch()
	start := time.Now()
	if eps := tr.History.Epochs; len(eps) > 0 {
		l.before = eps[len(eps)-1].Elapsed
	}
	l.start = start
	lastLine, lastSave := start, start
	epochStart, epochSamples := start, 0
	var nllSum float64
	var nllN, lineSamples int
	for done := 0; !tr.Done() && (maxSteps == 0 || done < maxSteps); done++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := len(tr.BatchIndices(tr.Position))
		nll, err := tr.Step()
		if err != nil {
			return err
		}
		nllSum += nll
		nllN++
		lineSamples += n
		epochSamples += n
		now := time.Now()
		if now.Sub(lastLine) >= progress {
			p := tr.Position
			fmt.Printf("epoch %d/%d  step %d/%d (%4.1f%%)  %6.0f samples/s  train NLL %.2f nats\n",
				p.Epoch+1, tr.Config.Epochs, p.StepInEpoch, spe, 100*float64(p.StepInEpoch)/float64(spe),
				float64(lineSamples)/now.Sub(lastLine).Seconds(), nllSum/float64(nllN))
			lastLine, lineSamples, nllSum, nllN = now, 0, 0, 0
		}
		if tr.Position.StepInEpoch == 0 {
			sps := float64(epochSamples) / time.Since(epochStart).Seconds()
			if err := l.endEpoch(sps); err != nil {
				return err
			}
			lastSave = time.Now()
			epochStart, epochSamples = time.Now(), 0
		} else if saveEvery > 0 && now.Sub(lastSave) >= saveEvery {
			if err := l.save(); err != nil {
				return err
			}
			lastSave = time.Now()
		}
	}
	return nil
}

// endEpoch scores the eval set, records the result, writes the sample grid and
// the learning curves, and saves the state.
func (l *trainLoop) endEpoch(samplesPerSec float64) error {
	tr := l.tr
	t0 := time.Now()
	ll := tr.Evaluate()
	r := train.EpochResult{
		Epoch:         tr.Position.Epoch,
		Step:          tr.Position.Step,
		TestLL:        ll,
		BitsPerDim:    train.BitsPerDim(ll, tr.Model.Config.Dim),
		SamplesPerSec: samplesPerSec,
		Elapsed:       l.before + time.Since(l.start).Seconds(),
	}
	if pts := tr.History.Points; len(pts) > 0 {
		r.TrainNLL = pts[len(pts)-1].TrainNLL
	}
	tr.History.Epochs = append(tr.History.Epochs, r)
	fmt.Printf("epoch %d done: %s log-likelihood %.2f nats per image, %.3f bits/dim (scored %d images in %.1fs; %s of training)\n",
		r.Epoch, tr.Data.EvalName, ll, r.BitsPerDim, tr.Data.Eval.N, time.Since(t0).Seconds(),
		(time.Duration(r.Elapsed) * time.Second).Round(time.Second))
	if err := train.WriteEpochImages(l.out, tr.Model, tr.History, tr.Data.EvalName, r.Epoch, l.samples, tr.Config.Seed+uint64(r.Epoch)); err != nil {
		return err
	}
	if bestEpoch(tr.History.Epochs) == len(tr.History.Epochs)-1 {
		if err := tr.State().Export().SaveFile(filepath.Join(l.out, bestFile)); err != nil {
			return err
		}
	}
	return l.save()
}

// bestFile is the model of the epoch that scored highest so far, in train's
// --out folder.
const bestFile = "best.nice"

// bestEpoch is the index of the highest-scoring epoch (the earliest of
// equals; -1 for none).
func bestEpoch(eps []train.EpochResult) int {
	best := -1
	for i, e := range eps {
		if best < 0 || e.TestLL > eps[best].TestLL {
			best = i
		}
	}
	return best
}
