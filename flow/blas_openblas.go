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
	"gonum.org/v1/netlib/blas/netlib"
	"gorgonia.org/tensor"
)

func init() {
	tensor.Use(netlib.Implementation{})
	blasName = "OpenBLAS"
}

// SetBLASThreads sets how many threads OpenBLAS uses for one product.
func SetBLASThreads(n int) {
	if n > 0 {
		C.openblas_set_num_threads(C.int(n))
	}
}

// BLASThreads reports how many threads OpenBLAS uses for one product.
func BLASThreads() int { return int(C.openblas_get_num_threads()) }
