package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/replay"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

func init() {
	register("verify", command{summary: "replay a stopped coordinator's ledger in one process and check its checkpoints bit for bit", run: runVerify})
}

// scoreTolerance bounds the relative difference between an epoch's score
// as the workers computed it (each its shard of the scored set) and as the
// replay computes it (the whole set in batches): the same model, with the
// images grouped in other products and the sums taken in another order.
const scoreTolerance = 1e-6

func runVerify(ctx context.Context, args []string) error {
	fs := newFlagSet("verify", "--state-dir DIR [flags]",
		"Recomputes a distributed run in this process from its coordinator's ledger and compares every\n"+
			"stored checkpoint with the replay bit for bit (parameters, Adam moments and step, position,\n"+
			"training-loss record), and every epoch score within a relative "+fmt.Sprint(scoreTolerance)+".\n\n"+
			"Each committed step is replayed as it was run: the same shards of the same global batch, summed\n"+
			"by an in-memory ring of as many members as summed it; where the ledger records them, the batch's\n"+
			"log-likelihood and the digests of the reduced gradient and of the parameters are compared at\n"+
			"every step, so a difference is found at the step it happens. Whatever failed during the run (killed\n"+
			"workers, a restarted coordinator, redone steps), a run that kept its invariants replays exactly;\n"+
			"the first checkpoint that does not names the step where the run left the mathematics of its\n"+
			"steps. It costs about what training on one process costs. The coordinator must be stopped.\n\n"+
			"A replay needs a build that computes a step's floats as the run's workers did: each worker says its\n"+
			"build's numerics (this build: "+fmt.Sprint(train.Numerics)+") and the ledger keeps it with its shard, and verify refuses a\n"+
			"ledger of other numerics before replaying, naming the step and the worker.")
	stateDir := fs.String("state-dir", "", "the stopped coordinator's state folder (its nice.db, ledger.jsonl and scores.json)")
	data := fs.String("data", "", "folder with the four MNIST IDX .gz files (default: found automatically)")
	from := fs.Int64("from", 0, "start from the stored checkpoint at this step instead of the run's initial state (0)")
	threads := fs.Int("threads", 0, "BLAS threads (0: the BLAS default; the result does not depend on it)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *stateDir == "" {
		return errors.New("--state-dir is required: name the state folder of a stopped coordinator (serve's --state-dir)")
	}
	noteBLAS(*threads)
	v, err := loadRun(ctx, *stateDir)
	if err != nil {
		return err
	}
	return v.run(ctx, *data, *from)
}

// verification is what a stopped coordinator's folder holds.
type verification struct {
	dbPath, ledgerPath string
	checkpoints        map[int64]*train.State // the ones that verify, by step
	newest             *train.State
	steps              []replay.Step
	scores             []train.EpochResult
}

func loadRun(ctx context.Context, dir string) (*verification, error) {
	store, dbPath, err := openStateDir(dir, "stop it first: verify reads every checkpoint and the ledger as they stand")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	v := &verification{dbPath: dbPath, ledgerPath: filepath.Join(dir, "ledger.jsonl"), checkpoints: map[int64]*train.State{}}
	list, err := store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the checkpoints of %s: %w", dbPath, err)
	}
	for _, l := range list {
		if !l.Verified() {
			fmt.Printf("checkpoint at step %d: not compared (%v)\n", l.Info.Step, l.Problem)
			continue
		}
		cp, err := store.Load(ctx, l.Info.Step)
		if err == nil {
			var st *train.State
			if st, err = train.DecodeState(cp.Blob); err == nil {
				v.checkpoints[st.Position.Step] = st
				if v.newest == nil || st.Position.Step > v.newest.Position.Step {
					v.newest = st
				}
				continue
			}
		}
		if errors.Is(err, checkpoint.ErrCorrupt) {
			fmt.Printf("checkpoint at step %d: not compared (%v)\n", l.Info.Step, err)
			continue
		}
		return nil, fmt.Errorf("checkpoint at step %d of %s: %w", l.Info.Step, dbPath, err)
	}
	if v.newest == nil {
		return nil, fmt.Errorf("%s holds no checkpoint that verifies: nothing to compare a replay with", dbPath)
	}
	f, err := os.Open(v.ledgerPath)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("no ledger %s: the coordinator writes one beside its checkpoints; without it the steps cannot be replayed", v.ledgerPath)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if v.steps, err = replay.ReadLedger(f); err != nil {
		return nil, fmt.Errorf("%s: %w", v.ledgerPath, err)
	}
	kept, err := coordinator.LoadScores(dir, v.newest.Config.Hash())
	if err != nil {
		return nil, err
	}
	v.scores = coordinator.MergeScores(slices.Clone(v.newest.History.Epochs), kept)
	return v, nil
}

func (v *verification) run(ctx context.Context, dataDir string, from int64) error {
	c := v.newest.Config
	end := v.newest.Position.Step
	if int64(len(v.steps)) < end {
		return fmt.Errorf("%s holds steps 0 to %d, the newest checkpoint is at step %d: the steps between cannot be replayed", v.ledgerPath, len(v.steps)-1, end)
	}
	if from < 0 || from > end {
		return fmt.Errorf("--from %d: name a stored checkpoint's step between 0 and %d (stored: %v)", from, end, v.storedSteps())
	}
	unknown, err := replay.CheckNumerics(v.steps[from:end])
	if err != nil {
		return fmt.Errorf("%s: %w", v.ledgerPath, err)
	}
	if unknown > 0 {
		fmt.Printf("%d shards of the ledger do not say how their builds computed a step (builds before numerics were recorded); they replay bit for bit only on a build that computed a step as theirs did (this build: numerics %d)\n",
			unknown, train.Numerics)
	}
	dir, err := mnist.FindDir(dataDir)
	if err != nil {
		return err
	}
	trainSet, testSet, err := mnist.Load(dir)
	if err != nil {
		return err
	}
	tr, err := train.New(c, train.SplitData(c, trainSet, testSet))
	if err != nil {
		return err
	}
	if from > 0 {
		st, ok := v.checkpoints[from]
		if !ok {
			return fmt.Errorf("--from %d: no checkpoint that verifies at that step (stored: %v)", from, v.storedSteps())
		}
		if err := tr.SetState(st); err != nil {
			return err
		}
	}
	fmt.Printf("replaying steps %d to %d of %s (model %s, batch %d) against %d checkpoints of %s\n",
		from, end, v.ledgerPath, c.Hash(), c.Batch, len(v.checkpoints), v.dbPath)
	r := replay.New(tr)
	defer r.Close()
	var equal, scored int
	t0 := time.Now()
	lastNote := t0
	for s := from; s < end; s++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stopped at step %d: %w", s, err)
		}
		if err := r.Step(ctx, v.steps[s]); err != nil {
			if errors.As(err, new(*replay.MismatchError)) {
				return fmt.Errorf("%w: the run computed something other than the mathematics of its ledger there (it equals the replay up to %s)", err, v.lastEqual(from, s+1))
			}
			return err
		}
		step := tr.Position.Step
		if st, ok := v.checkpoints[step]; ok && step > from {
			if err := replay.SameState(st, tr.State()); err != nil {
				return fmt.Errorf("the checkpoint at step %d differs from the replay: %v; the run computed something other than the steps of its ledger between %s and step %d",
					step, err, v.lastEqual(from, step), step)
			}
			equal++
			fmt.Printf("step %d: the checkpoint equals the replay bit for bit\n", step)
		}
		if tr.Position.StepInEpoch == 0 {
			ok, err := v.checkScore(tr)
			if err != nil {
				return err
			}
			if ok {
				scored++
			}
		}
		if now := time.Now(); now.Sub(lastNote) >= 10*time.Second {
			done := float64(s+1-from) / float64(end-from)
			left := time.Duration(float64(now.Sub(t0)) * (1 - done) / done)
			fmt.Printf("replayed step %d of %d (%.0f%%, about %v left)\n", s+1, end, 100*done, left.Round(time.Second))
			lastNote = now
		}
	}
	fmt.Printf("verified: steps %d to %d replayed in %.1fs; %d checkpoints equal the replay bit for bit, %d epoch scores agree\n",
		from, end, time.Since(t0).Seconds(), equal, scored)
	return nil
}

// checkScore compares the recorded score of the epoch tr has just ended
// with the replay's; it reports whether there was one to compare.
func (v *verification) checkScore(tr *train.Trainer) (bool, error) {
	epoch := tr.Position.Epoch
	i := slices.IndexFunc(v.scores, func(e train.EpochResult) bool { return e.Epoch == epoch })
	if i < 0 {
		return false, nil
	}
	rec := v.scores[i]
	got := tr.Evaluate()
	rel := math.Abs(got-rec.TestLL) / math.Max(math.Abs(got), 1e-12)
	if !(rel <= scoreTolerance) {
		return false, fmt.Errorf("epoch %d: the run scored %.9g nats per image, the replayed model scores %.9g (relative difference %.3g, more than %g)", epoch, rec.TestLL, got, rel, scoreTolerance)
	}
	fmt.Printf("epoch %d: %s log-likelihood %.6f, the replay's %.6f (relative difference %.2g)\n", epoch, tr.Data.EvalName, rec.TestLL, got, rel)
	return true, nil
}

func (v *verification) storedSteps() []int64 {
	var s []int64
	for k := range v.checkpoints {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// lastEqual names where the replay was last known equal to the run
// before step.
func (v *verification) lastEqual(from, step int64) string {
	best := fmt.Sprintf("step %d, where the replay started", from)
	for _, k := range v.storedSteps() {
		if k > from && k < step {
			best = fmt.Sprintf("the checkpoint at step %d", k)
		}
	}
	return best
}
