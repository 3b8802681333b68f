package flow

import (
	"gonum.org/v1/gonum/blas"
	"gorgonia.org/tensor"
)

// blasName says which BLAS the build uses; blas_openblas.go overrides it.
var blasName = "gonum (pure Go)"

// BLASName names the BLAS implementation matrix products run on.
func BLASName() string { return blasName }

// FastBLAS reports whether the build uses an optimised native BLAS.
func FastBLAS() bool { return blasName != "gonum (pure Go)" }

// gemm computes C = alpha op(A) op(B) + beta C on row-major matrices through the
// BLAS that gorgonia.org/tensor is set to use.
func gemm(ta, tb bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	t1, t2 := blas.NoTrans, blas.NoTrans
	if ta {
		t1 = blas.Trans
	}
	if tb {
		t2 = blas.Trans
	}
	tensor.WhichBLAS().Sgemm(t1, t2, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// colSums sets dst[j] = sum_i src[i*ld+j] for i < rows, j < len(dst), using ones
// (at least rows long, all 1) as the summing vector.
func colSums(dst, src []float32, rows, ld int, ones []float32) {
	if rows == 0 {
		clear(dst)
		return
	}
	tensor.WhichBLAS().Sgemv(blas.Trans, rows, len(dst), 1, src, ld, ones, 1, 0, dst, 1)
}
