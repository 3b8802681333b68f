// Package plot writes the trainer's pictures as PNG, in pure Go: grids of
// sampled digits (SampleGrid) and learning curves (Curves).
//
// What it promises: the output is a valid PNG of a size fixed by the
// arguments (documented on each function); bad input (wrong lengths,
// empty grids) is an error and nothing is written; values that cannot be
// drawn (NaN, ±Inf) are skipped or clamped, never an error. Nothing here
// keeps state between calls.
package plot
