//go:build !(openblas && cgo)

package flow

import (
	"runtime"
	"sync/atomic"
)

// stepThreads is how many of a step's parts run at once (0: GOMAXPROCS).
var stepThreads atomic.Int32

// SetBLASThreads sets how many of a training step's parts (split.go) run at
// once. gonum's products themselves follow GOMAXPROCS, and they sum in the
// same order however many goroutines run them, so the floats do not depend
// on n.
func SetBLASThreads(n int) {
	if n > 0 {
		stepThreads.Store(int32(n))
	}
}

// BLASThreads reports how many of a step's parts run at once.
func BLASThreads() int {
	if n := stepThreads.Load(); n > 0 {
		return int(n)
	}
	return runtime.GOMAXPROCS(0)
}
