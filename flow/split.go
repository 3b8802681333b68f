package flow

// A step's matrix products each run on one BLAS thread; a step uses several
// threads by running several products at once, on the shared pool: the
// forward pass splits the batch's rows, and each layer's backward pass runs
// its weight gradient (split by columns) beside its input gradient (split by
// rows). Every output element is computed by one product of the same shape
// along its inner dimension, so the result does not depend on the split, and
// no thread waits in the BLAS's own thread server.

// backLayer is one dense layer's backward pass: with delta = dL/d(output)
// (n x Out, leading dimension ldd) and a its input (n x In, lda), it writes
// the weight and bias gradients into gd and, when gin is set, dL/d(input)
// into gin (n x In, ldg): added to it when accumulate, else masked by the ReLU
// that produced a when mask.
type backLayer struct {
	d, gd            Dense
	a, delta, gin    []float32
	lda, ldd, ldg, n int
	mask, accumulate bool
	weightParts      int
	inputParts       int
}

// stepParts is the number of parts a batch of n rows is split into.
func stepParts(n int) int {
	return max(1, min(BLASThreads(), defaultPool().n, n))
}

// split runs w.splitFn on parts of n rows: part i is rows chunk(n, parts, i).
func (w *Workspace) split(n int, fn func(int)) {
	w.n, w.parts = n, stepParts(n)
	if w.parts == 1 {
		fn(0)
		return
	}
	defaultPool().run(w.parts, fn)
}

func (w *Workspace) forwardPart(i int) {
	lo, hi := chunk(w.n, w.parts, i)
	w.model.forwardRows(w, w.x, lo, hi)
}

// backward runs b, in parts when the step has several threads.
func (w *Workspace) backward(b backLayer) {
	p := stepParts(b.n)
	b.weightParts, b.inputParts = p, 0
	if b.gin != nil {
		b.weightParts = max(1, p/2)
		b.inputParts = max(1, p-b.weightParts)
	}
	w.back = b
	if p == 1 {
		for i := 0; i < b.weightParts+b.inputParts; i++ {
			w.backPart(i)
		}
	} else {
		defaultPool().run(b.weightParts+b.inputParts, w.backFn)
	}
	w.back = backLayer{}
}

// backPart runs part i of w.back: weight-gradient columns first, then
// input-gradient rows.
func (w *Workspace) backPart(i int) {
	b := &w.back
	d, gd := b.d, b.gd
	if i < b.weightParts {
		lo, hi := chunk(d.Out, b.weightParts, i)
		gemm(true, false, d.In, hi-lo, b.n, 1, b.a, b.lda, b.delta[lo:], b.ldd, 0, gd.W[lo:], d.Out)
		if i == 0 {
			// Whole: the BLAS's matrix-vector kernels sum in an order
			// that depends on the number of columns.
			colSums(gd.B, b.delta, b.n, b.ldd, w.one)
		}
		return
	}
	lo, hi := chunk(b.n, b.inputParts, i-b.weightParts)
	if lo == hi {
		return
	}
	var beta float32
	if b.accumulate {
		beta = 1
	}
	gin := b.gin[lo*b.ldg:]
	gemm(false, true, hi-lo, d.In, d.Out, 1, b.delta[lo*b.ldd:], b.ldd, d.W, d.Out, beta, gin, b.ldg)
	if b.mask {
		reluMask(gin[:(hi-lo)*b.ldg], b.a[lo*b.lda:])
	}
}
