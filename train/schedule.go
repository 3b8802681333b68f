package train

// Position is where training stands: the next step to take.
type Position struct {
	// Step counts the steps applied since the start of training.
	Step int64 `json:"step"`
	// Epoch is the zero-based epoch the next step belongs to.
	Epoch int `json:"epoch"`
	// StepInEpoch is the next step's index within its epoch.
	StepInEpoch int `json:"step_in_epoch"`
}

// StepsPerEpoch is how many global batches cover n samples: the last one
// takes the remainder.
func StepsPerEpoch(n, batch int) int {
	return (n + batch - 1) / batch
}

// BatchBounds returns the positions [lo, hi) in the epoch permutation of step
// s of an epoch over n samples.
func BatchBounds(n, batch, s int) (lo, hi int) {
	lo = s * batch
	hi = min(lo+batch, n)
	return lo, hi
}

// Shard returns the part [lo, hi) of a batch of size n that rank r of ranks
// computes: contiguous and balanced, the first n mod ranks one longer.
func Shard(n, r, ranks int) (lo, hi int) {
	q, rem := n/ranks, n%ranks
	lo = r*q + min(r, rem)
	hi = lo + q
	if r < rem {
		hi++
	}
	return lo, hi
}

// Next returns the position after p in an epoch of stepsPerEpoch steps.
func (p Position) Next(stepsPerEpoch int) Position {
	p.Step++
	p.StepInEpoch++
	if p.StepInEpoch >= stepsPerEpoch {
		p.Epoch++
		p.StepInEpoch = 0
	}
	return p
}
