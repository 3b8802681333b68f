package flow

// A step's matrix products each run on one BLAS thread; a step uses two
// threads by running two products at once, on the shared pool: the forward
// pass cuts each layer's output columns in two, and each layer's backward
// pass runs its weight gradient beside its input gradient. The element-wise
// passes of the forward pass (the permutation, the copy of each state, the
// prior) are cut by rows.
//
// The forward pass cuts columns, not rows, because every part of a product
// packs its share of the weight matrix into OpenBLAS's layout, and at a
// worker's batch the weights are most of what is packed: halves of the rows
// packed all of W twice a layer, halves of the columns pack it once, and
// the batch's rows (a quarter of the weights' size at 256 rows, less on
// fewer) twice. perf of `up --workers 2` put that second packing at 3.5 % of
// all CPU.
//
// How the work is cut is a function of the shapes alone, never of the
// thread count: one thread runs the same parts one after the other. The cut
// changes the floats, because OpenBLAS picks its kernel by a product's size
// (below about 10^6 multiply-adds its "small matrix" kernel sums in another
// order), so a gradient whose cut followed the threads would differ between
// a worker with one thread and a worker with two, and a run could not be
// replayed bit for bit (internal/replay).

// forwardParts is how many parts the forward pass cuts n rows into for its
// element-wise passes.
func forwardParts(n int) int { return min(2, max(n, 1)) }

// columnParts is how many parts a layer with out output columns is cut
// into: two once it has at least two columnAligns of columns (part 1 may
// then hold fewer than one: 45 columns cut at 32).
func columnParts(out int) int {
	if out >= 2*columnAlign {
		return 2
	}
	return 1
}

// columnAlign is the unit columns are cut in: 16 floats, 64 bytes, so that
// where a row starts on a 64-byte line and holds a multiple of 16 floats,
// two threads writing its halves share no cache line. Where it does not
// (the hidden layers' rows are 1000 floats), they may share one at the cut,
// which costs speed, never bits: the cut depends on out alone.
const columnAlign = 16

// columnCut returns the columns [c0, c1) of part i of out columns cut into
// parts: the first part's end is out/2 rounded up to a multiple of
// columnAlign.
func columnCut(out, parts, i int) (c0, c1 int) {
	if parts == 1 {
		return 0, out
	}
	mid := (out/2 + columnAlign - 1) / columnAlign * columnAlign
	if i == 0 {
		return 0, mid
	}
	return mid, out
}

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
}

// parallel calls fn(i) for i in [0, parts): at once on the pool when the
// step has several threads, else in order.
func parallel(parts int, fn func(int)) {
	if parts == 1 || BLASThreads() <= 1 {
		for i := range parts {
			fn(i)
		}
		return
	}
	defaultPool().run(parts, fn)
}

func (w *Workspace) permutePart(i int) {
	lo, hi := chunk(w.n, forwardParts(w.n), i)
	w.model.permuteRows(w, w.x, lo, hi)
}

func (w *Workspace) layerPartFn(i int) { w.model.layerPart(w, i) }

func (w *Workspace) priorPart(i int) {
	lo, hi := chunk(w.n, forwardParts(w.n), i)
	w.model.priorRows(w, lo, hi)
}

// backward runs b: its weight gradient, and beside it its input gradient
// when there is one.
func (w *Workspace) backward(b backLayer) {
	w.back = b
	parts := 1
	if b.gin != nil {
		parts = 2
	}
	parallel(parts, w.backFn)
	w.back = backLayer{}
}

// backPart runs part i of w.back: 0 the weight and bias gradients, 1 the
// input gradient.
func (w *Workspace) backPart(i int) {
	b := &w.back
	d, gd := b.d, b.gd
	if i == 0 {
		gemm(true, false, d.In, d.Out, b.n, 1, b.a, b.lda, b.delta, b.ldd, 0, gd.W, d.Out)
		colSums(gd.B, b.delta, b.n, b.ldd, w.one)
		return
	}
	var beta float32
	if b.accumulate {
		beta = 1
	}
	gemm(false, true, b.n, d.In, d.Out, 1, b.delta, b.ldd, d.W, d.Out, beta, b.gin, b.ldg)
	if b.mask {
		reluMask(b.gin[:b.n*b.ldg], b.a)
	}
}
