// Package replay recomputes a distributed run in one process from its
// ledger, bit for bit (with the run's gradient wire format: bfloat16
// roundings happen in the ring's code, which the replay runs too).
//
// The ledger says, for every committed step, how the global batch was cut
// into shards and so how many members summed it. A step's reduced gradient
// depends on exactly that: each shard's gradient (a function of its
// samples only) and the ring's order of additions (a function of the ring
// size only). Replaying each step with the same shards, summed by real ring
// members of the same size over the in-memory transport, therefore gives
// the very floats the workers held, whatever failed in between. A run that
// does not replay to its checkpoints bit for bit computed something other
// than the mathematics of its steps.
package replay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/nice-flow/nice/ring"
	"github.com/nice-flow/nice/train"
)

// Step is one committed step as the coordinator's ledger records it.
type Step struct {
	Step        int64   `json:"step"`
	Epoch       int     `json:"epoch"`
	StepInEpoch int     `json:"step_in_epoch"`
	Batch       int     `json:"batch"`
	Shards      []Shard `json:"shards"`
	// What the members reported, when the ledger has it (0: not
	// recorded): the log-likelihood summed over the batch, the digest of
	// the reduced gradient, and that of the parameters the step started
	// from (recorded every few steps).
	SumLL        float64 `json:"sum_ll"`
	GradDigest   uint32  `json:"grad_digest"`
	ParamsDigest uint32  `json:"params_digest"`
}

// MismatchError says that a replayed step computed something other than
// what the run recorded for it.
type MismatchError struct {
	Step      int64
	What      string // "parameters", "log-likelihood", "reduced gradient"
	Run, Mine string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("step %d: the %s differ from the run's (the run recorded %s, the replay computes %s)", e.Step, e.What, e.Run, e.Mine)
}

// Shard is the part [Lo, Hi) of a step's global batch that rank i (its
// place in Step.Shards) computed.
type Shard struct {
	Worker string `json:"Worker"`
	Lo     int    `json:"Lo"`
	Hi     int    `json:"Hi"`
	// Numerics is that of the worker's build (train.Numerics; 0: a build
	// that did not say).
	Numerics uint32 `json:"Numerics,omitempty"`
}

// NumericsError says that a shard of the ledger was computed by a build
// whose step floats differ from this build's (train.Numerics), so a replay
// here would differ from the run without the run having done anything
// wrong.
type NumericsError struct {
	Step     int64
	Worker   string
	Numerics uint32
}

func (e *NumericsError) Error() string {
	return fmt.Sprintf("step %d: worker %s computed its shard with a build of numerics %d, and this build is numerics %d: "+
		"the two compute a step's floats differently (how products are cut), so this build cannot replay the run bit for bit; "+
		"verify it with a build of numerics %d (the release the run was trained with)",
		e.Step, e.Worker, e.Numerics, train.Numerics, e.Numerics)
}

// CheckNumerics looks at the shards of steps and returns a *NumericsError
// for the first one a build of other numerics than this one computed, and
// how many shards do not say their numerics (ledgers written before workers
// said it: such a run replays here only if its builds computed as this one
// does).
func CheckNumerics(steps []Step) (unknown int, err error) {
	for _, s := range steps {
		for _, sh := range s.Shards {
			switch sh.Numerics {
			case 0:
				unknown++
			case train.Numerics:
			default:
				return unknown, &NumericsError{Step: s.Step, Worker: sh.Worker, Numerics: sh.Numerics}
			}
		}
	}
	return unknown, nil
}

// ReadLedger reads the lines of a ledger (ledger.jsonl) and returns the
// committed trajectory: step 0, 1, 2, ... where a later commit of a step
// (a coordinator that resumed from an older checkpoint) supersedes the
// earlier one and everything after it. A torn last line, as a crash
// leaves, ends the ledger; any other bad line is an error naming it.
func ReadLedger(r io.Reader) ([]Step, error) {
	var steps []Step
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line := 0
	var torn error
	for sc.Scan() {
		line++
		if torn != nil {
			return nil, torn
		}
		var s Step
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			torn = fmt.Errorf("ledger line %d: %w", line, err)
			continue
		}
		if s.Step < 0 || s.Step > int64(len(steps)) {
			return nil, fmt.Errorf("ledger line %d commits step %d after step %d: steps are missing", line, s.Step, len(steps)-1)
		}
		steps = append(steps[:s.Step], s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the ledger: %w", err)
	}
	return steps, nil
}

// Replayer recomputes committed steps on a trainer.
type Replayer struct {
	tr    *train.Trainer
	rings map[int]*rings
	grads [][]float32
	sums  []float64
}

// rings are the members of one in-memory ring of a given size.
type rings struct {
	net     *ring.InmemNetwork
	members []*ring.Member
}

// New returns a replayer that advances tr.
func New(tr *train.Trainer) *Replayer {
	return &Replayer{tr: tr, rings: make(map[int]*rings)}
}

// Close stops the in-memory rings.
func (r *Replayer) Close() {
	for _, rs := range r.rings {
		for _, m := range rs.members {
			m.Close()
		}
	}
	clear(r.rings)
}

func (r *Replayer) ring(n int) (*rings, error) {
	if rs, ok := r.rings[n]; ok {
		return rs, nil
	}
	rs := &rings{net: ring.NewInmemNetwork()}
	peers := make([]ring.Peer, n)
	for i := range peers {
		peers[i] = ring.Peer{ID: "rank" + strconv.Itoa(i), Addr: "rank" + strconv.Itoa(i)}
	}
	wire, err := ring.ParseWire(r.tr.Config.GradientWire)
	if err != nil {
		return nil, err
	}
	for i := range n {
		m, err := ring.NewMember(rs.net.Transport(peers[i].Addr), ring.DefaultConfig())
		if err == nil {
			m.SetWire(wire)
			err = m.Configure(1, i, peers)
		}
		if err != nil {
			for _, m := range rs.members {
				m.Close()
			}
			return nil, fmt.Errorf("a ring of %d members: %w", n, err)
		}
		rs.members = append(rs.members, m)
	}
	r.rings[n] = rs
	return rs, nil
}

// Step recomputes one committed step: each shard's gradient, their sum by
// a ring of as many members, and the update. The trainer must stand at the
// step's position.
func (r *Replayer) Step(ctx context.Context, s Step) error {
	tr := r.tr
	want := train.Position{Step: s.Step, Epoch: s.Epoch, StepInEpoch: s.StepInEpoch}
	if tr.Position != want {
		return fmt.Errorf("ledger step %d is at %+v, the replay stands at %+v", s.Step, want, tr.Position)
	}
	if s.ParamsDigest != 0 {
		if d := max(train.Digest(tr.Model.Params), 1); d != s.ParamsDigest {
			return &MismatchError{Step: s.Step, What: "parameters the step starts from", Run: fmt.Sprintf("digest %08x", s.ParamsDigest), Mine: fmt.Sprintf("%08x", d)}
		}
	}
	idx := tr.BatchIndices(tr.Position)
	n := len(s.Shards)
	if n == 0 || s.Batch != len(idx) {
		return fmt.Errorf("ledger step %d: %d shards of a batch of %d, the schedule's batch has %d samples", s.Step, n, s.Batch, len(idx))
	}
	for len(r.grads) < n {
		r.grads = append(r.grads, make([]float32, len(tr.Grad)))
		r.sums = append(r.sums, 0)
	}
	for i, sh := range s.Shards {
		if sh.Lo < 0 || sh.Hi < sh.Lo || sh.Hi > len(idx) {
			return fmt.Errorf("ledger step %d: shard %d is [%d, %d) of a batch of %d", s.Step, i, sh.Lo, sh.Hi, len(idx))
		}
		r.sums[i] = tr.ComputeGradient(idx[sh.Lo:sh.Hi], s.Epoch)
		copy(r.grads[i], tr.Grad)
	}
	if n > 1 {
		rs, err := r.ring(n)
		if err != nil {
			return err
		}
		errs := make(chan error, n)
		for i, m := range rs.members {
			go func() { errs <- m.AllReduce(ctx, r.grads[i]) }()
		}
		var all []error
		for range n {
			all = append(all, <-errs)
		}
		if err := errors.Join(all...); err != nil {
			return fmt.Errorf("ledger step %d: the all-reduce of %d members: %w", s.Step, n, err)
		}
	}
	copy(tr.Grad, r.grads[0])
	var sum float64 // in rank order, as the coordinator sums the reports
	for i := range n {
		sum += r.sums[i]
	}
	if s.SumLL != 0 && math.Float64bits(s.SumLL) != math.Float64bits(sum) {
		return &MismatchError{Step: s.Step, What: "log-likelihoods of the batch", Run: fmt.Sprint(s.SumLL), Mine: fmt.Sprint(sum)}
	}
	// One pass for the norm and the digest, as a worker takes them.
	norm, d := tr.Opt.GradNormDigest(tr.Grad)
	if s.GradDigest != 0 && d != s.GradDigest {
		return &MismatchError{Step: s.Step, What: "reduced gradients", Run: fmt.Sprintf("digest %08x", s.GradDigest), Mine: fmt.Sprintf("%08x", d)}
	}
	if err := tr.ApplyWithNorm(s.Batch, sum, norm); err != nil {
		return fmt.Errorf("ledger step %d: %w", s.Step, err)
	}
	return nil
}

// SameState returns nil when a and b continue training identically: the
// same position, Adam step, parameters, moments and training-loss record,
// bit for bit. Otherwise it names the first difference.
func SameState(a, b *train.State) error {
	if err := SameFloats(a, b); err != nil {
		return err
	}
	if math.Float64bits(a.LossSum) != math.Float64bits(b.LossSum) || a.LossN != b.LossN {
		return fmt.Errorf("training loss since the last record %v over %d steps against %v over %d", a.LossSum, a.LossN, b.LossSum, b.LossN)
	}
	pa, pb := a.History.Points, b.History.Points
	if len(pa) != len(pb) {
		return fmt.Errorf("%d training-loss records against %d", len(pa), len(pb))
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return fmt.Errorf("training-loss record %d is %+v against %+v", i, pa[i], pb[i])
		}
	}
	return nil
}

// SameFloats returns nil when a and b hold the same position, Adam step,
// parameters and moments, bit for bit: the same model and optimiser, whatever
// their training-loss records say (a run whose workers summed the loss in
// another order still takes the same steps). Otherwise it names the first
// difference.
func SameFloats(a, b *train.State) error {
	if a.Position != b.Position || a.AdamStep != b.AdamStep {
		return fmt.Errorf("position %+v (Adam step %d) against %+v (Adam step %d)", a.Position, a.AdamStep, b.Position, b.AdamStep)
	}
	for _, f := range []struct {
		name string
		a, b []float32
	}{{"parameter", a.Params, b.Params}, {"first moment", a.M, b.M}, {"second moment", a.V, b.V}} {
		if len(f.a) != len(f.b) {
			return fmt.Errorf("%d %ss against %d", len(f.a), f.name, len(f.b))
		}
		for i := range f.a {
			if math.Float32bits(f.a[i]) != math.Float32bits(f.b[i]) {
				return fmt.Errorf("%s %d of %d is %v against %v", f.name, i, len(f.a), f.a[i], f.b[i])
			}
		}
	}
	return nil
}
