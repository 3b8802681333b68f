//go:build !(openblas && cgo)

package flow

import "runtime"

// SetBLASThreads has no effect on gonum's BLAS, which follows GOMAXPROCS.
func SetBLASThreads(int) {}

// BLASThreads reports how many threads gonum's BLAS may use.
func BLASThreads() int { return runtime.GOMAXPROCS(0) }
