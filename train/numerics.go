package train

// Numerics names how this build computes the floats of a step: how the
// forward and backward passes cut their matrix products (flow/split.go), the
// element-wise passes, the ring's order of additions, Adam. Two builds with
// the same Numerics compute bitwise the same step from the same state and
// shards; two with different ones may differ in the last bits. So a run
// replays bit for bit (nice-coord verify) only on a build of the Numerics its
// workers had, and every worker says its own in its reports, which the
// coordinator's ledger keeps with each shard.
//
// Bump it with any change that moves a bit of a step:
//
//	1: the forward pass cut each product by the batch's rows (until commit
//	   39ce0da; no ledger records it, as workers did not yet say it)
//	2: the forward pass cuts each product by its output columns
const Numerics uint32 = 2
