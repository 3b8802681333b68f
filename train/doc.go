// Package train turns the flow model and the MNIST data into training: the
// schedule of global batches, one training step, evaluation of the test set,
// and the complete training state that a checkpoint holds.
//
// What it promises (docs/design.md, "What nice promises"):
//
//   - Step s of epoch e uses positions [sB, (s+1)B) of a permutation of the
//     training set that is a function of (seed, e); the last step of an epoch
//     takes the remainder, so every training sample is used exactly once per
//     epoch. Dequantisation noise is a function of (seed, e, sample index).
//   - A slice of a global batch (Shard) can be computed anywhere: the gradient
//     of the whole batch is the sum of its slices' gradients.
//   - A State holds everything needed to continue exactly: resuming from it
//     gives bitwise the trajectory of a run that never stopped.
package train
