package sim

import (
	"math/rand/v2"

	"github.com/nice-flow/nice/train"
)

// model is the integer stand-in for NICE: a replica's state is one uint64;
// a sample's gradient and log-likelihood are functions of the state, the
// epoch and the sample; an update mixes the state with the sum of its
// global batch's gradients. Sums of uint64 wrap and sums of small integers
// in float64 are exact, so the result does not depend on how a batch is
// split across ranks, and any other split, order or state shows.
type model struct {
	trainN, batch, epochs, evalN int
	spe                          int
	perms                        [][]int // per epoch
	canon                        []uint64
	scores                       []float64 // per epoch, 1-based (scores[0] unused)
}

func newModel(trainN, batch, epochs, evalN int, seed uint64) model {
	m := model{trainN: trainN, batch: batch, epochs: epochs, evalN: evalN, spe: train.StepsPerEpoch(trainN, batch)}
	for e := range epochs {
		r := rand.New(rand.NewPCG(seed, uint64(e)))
		m.perms = append(m.perms, r.Perm(trainN))
	}
	v := mix(seed ^ 0x5eed)
	m.canon = append(m.canon, v)
	m.scores = make([]float64, epochs+1)
	var pos train.Position
	for pos.Epoch < epochs {
		lo, hi := train.BatchBounds(trainN, batch, pos.StepInEpoch)
		g, ll := m.shard(v, pos, lo, hi)
		v = m.apply(v, pos.Step, g, hi-lo, ll)
		pos = pos.Next(m.spe)
		m.canon = append(m.canon, v)
		if pos.StepInEpoch == 0 {
			m.scores[pos.Epoch] = m.evalSum(v, 0, evalN) / float64(evalN)
		}
	}
	return m
}

func (m *model) total() int64 { return int64(m.epochs * m.spe) }

// shard sums the gradients and log-likelihoods of global-batch positions
// [lo, hi) of the epoch's permutation at state v.
func (m *model) shard(v uint64, pos train.Position, lo, hi int) (uint64, float64) {
	var g uint64
	var ll float64
	for p := lo; p < hi; p++ {
		i := uint64(m.perms[pos.Epoch][p])
		h := mix(v ^ i<<24 ^ uint64(pos.Epoch)<<48)
		g += h
		ll -= float64(h%7 + 1)
	}
	return g, ll
}

// apply is the update of a step with the reduced gradient g.
func (m *model) apply(v uint64, step int64, g uint64, batch int, sumLL float64) uint64 {
	return mix(v ^ mix(g) ^ uint64(batch)<<40 ^ uint64(int64(-sumLL))<<8 ^ uint64(step)*0x9e3779b97f4a7c15)
}

func (m *model) evalSum(v uint64, lo, hi int) float64 {
	var s float64
	for i := lo; i < hi; i++ {
		s -= float64(mix(v^uint64(i)*0xbf58476d1ce4e5b9)%11 + 1)
	}
	return s
}

// digest is the state digest the machines compare (never 0).
func digest(pos train.Position, v uint64) uint64 {
	return mix(v^uint64(pos.Step)*0x94d049bb133111eb) | 1
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
