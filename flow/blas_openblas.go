//go:build openblas && cgo

package flow

// OpenBLAS is linked statically from Debian's libopenblas-pthread-dev, so the
// resulting binary runs in an image with nothing else in it.

/*
#cgo linux,amd64 LDFLAGS: -L/usr/lib/x86_64-linux-gnu/openblas-pthread -l:libopenblas.a -lm -lpthread
#cgo linux,arm64 LDFLAGS: -L/usr/lib/aarch64-linux-gnu/openblas-pthread -l:libopenblas.a -lm -lpthread
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
*/
import "C"

import (
	"sync/atomic"

	"gonum.org/v1/netlib/blas/netlib"
	"gorgonia.org/tensor"
)

func init() {
	tensor.Use(netlib.Implementation{})
	blasName = "OpenBLAS"
	// A step runs its products side by side, each on one OpenBLAS thread
	// (see split.go): OpenBLAS's own thread server would make its idle
	// threads spin on sched_yield between the many short products of a step.
	stepThreads.Store(int32(C.openblas_get_num_threads()))
	C.openblas_set_num_threads(1)
}

// stepThreads is how many threads a training step uses; it starts at
// OPENBLAS_NUM_THREADS (read by OpenBLAS at start-up).
var stepThreads atomic.Int32

// SetBLASThreads sets how many threads the matrix products of a training step
// use together (each product runs on one OpenBLAS thread; a step runs up to n
// of them at once, and no more than GOMAXPROCS).
func SetBLASThreads(n int) {
	if n > 0 {
		stepThreads.Store(int32(n))
	}
}

// BLASThreads reports how many threads the matrix products of a step use.
func BLASThreads() int { return int(stepThreads.Load()) }
