// Package flow is the NICE model of Dinh, Krueger and Bengio (arXiv 1410.8516):
// additive coupling layers with alternating odd/even pixel partitions, a diagonal
// scaling exp(s) and a logistic (or Gaussian) prior, with hand-written backward
// passes and the Adam optimiser.
//
// What it promises:
//
//   - Parameters, gradients and Adam moments are each one contiguous []float32
//     laid out by Layout; per-layer views are sub-slices of that buffer, so a
//     collective or a checkpoint can move a whole model with no copies.
//   - Model.Gradient writes the gradient of the SUM over the batch of per-sample
//     log-likelihoods log p(x). A worker holding a slice of a global batch can
//     therefore sum its gradient with others' and divide by the global batch size.
//   - Everything is deterministic: the same parameters, inputs and BLAS give
//     bitwise the same outputs, and Adam's reductions do not depend on GOMAXPROCS.
//     With OpenBLAS every product runs on one thread and a step runs several side
//     by side (split.go), so the outputs do not depend on the thread count either.
//   - No I/O, and no allocation on the training path once a Workspace exists.
//
// Matrix products go through gorgonia.org/tensor's BLAS selection: gonum's pure Go
// by default, OpenBLAS when built with the openblas tag (see blas_openblas.go).
//
// Internally the 784 pixels are kept in "partition order": the even pixels first,
// then the odd ones, so that each half of a coupling is a contiguous column block
// of a row-major batch and feeds the matrix products without a copy. Inputs and
// outputs of the exported methods are in natural pixel order.
package flow
