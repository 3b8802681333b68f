package clustertest

import (
	"fmt"

	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

// CheckLedger verifies a ledger independently of the coordinator: the
// committed steps (the later commit of a step wins, and a coordinator that
// resumed from a checkpoint supersedes what it rolled back) run 0, 1, 2, ...
// without gaps or repeats, each at the position the schedule gives it, each
// step's shards partition its global batch, and no training sample is used
// twice in an epoch (and every sample is used once in each completed epoch).
// It returns the number of steps checked.
func CheckLedger(entries []LedgerEntry, trainN, batch int, seed uint64) (int, error) {
	var steps []LedgerEntry
	for _, e := range entries {
		if e.Step > int64(len(steps)) {
			return 0, fmt.Errorf("step %d committed after step %d: steps were skipped", e.Step, len(steps)-1)
		}
		steps = append(steps[:e.Step], e) // a repeated step supersedes it and all after it
	}
	spe := train.StepsPerEpoch(trainN, batch)
	var pos train.Position
	used := map[int][]int{} // epoch -> uses per sample
	perm := make([]int32, trainN)
	permEpoch := -1
	for _, e := range steps {
		if e.Step != pos.Step || e.Epoch != pos.Epoch || e.StepInEpoch != pos.StepInEpoch {
			return 0, fmt.Errorf("ledger step %d at epoch %d step %d, the schedule says epoch %d step %d", e.Step, e.Epoch, e.StepInEpoch, pos.Epoch, pos.StepInEpoch)
		}
		lo, hi := train.BatchBounds(trainN, batch, e.StepInEpoch)
		if e.Batch != hi-lo {
			return 0, fmt.Errorf("step %d: batch of %d, the schedule says %d", e.Step, e.Batch, hi-lo)
		}
		next := 0
		for _, sh := range e.Shards {
			if sh.Lo != next || sh.Hi < sh.Lo {
				return 0, fmt.Errorf("step %d: shards %v do not partition the batch", e.Step, e.Shards)
			}
			next = sh.Hi
		}
		if next != e.Batch {
			return 0, fmt.Errorf("step %d: shards %v cover %d of %d samples", e.Step, e.Shards, next, e.Batch)
		}
		if permEpoch != e.Epoch {
			mnist.Permutation(perm, seed, uint64(e.Epoch))
			permEpoch = e.Epoch
		}
		if used[e.Epoch] == nil {
			used[e.Epoch] = make([]int, trainN)
		}
		for _, idx := range perm[lo:hi] {
			used[e.Epoch][idx]++
			if used[e.Epoch][idx] > 1 {
				return 0, fmt.Errorf("epoch %d: sample %d used twice (step %d)", e.Epoch, idx, e.Step)
			}
		}
		pos = pos.Next(spe)
	}
	for epoch, u := range used {
		if epoch >= pos.Epoch {
			continue // not completed
		}
		for idx, k := range u {
			if k != 1 {
				return 0, fmt.Errorf("epoch %d: sample %d used %d times", epoch, idx, k)
			}
		}
	}
	return len(steps), nil
}
