package train

import "github.com/nice-flow/nice/internal/f32"

// copyFloats copies src into dst (as copy does) in pieces of 1 MiB: the
// runtime's memmove cannot be preempted, and one copy of a 77 MB buffer,
// page faults included, kept every other goroutine of a GOMAXPROCS=1
// process (its session heartbeats among them) waiting for seconds on a busy
// host.
func copyFloats(dst, src []float32) int {
	const piece = pieceBytes / 4
	n := min(len(dst), len(src))
	for lo := 0; lo < n; lo += piece {
		hi := min(lo+piece, n)
		copy(dst[lo:hi], src[lo:hi])
	}
	return n
}

// pieceBytes is how much a long copy, hash or write handles at once.
const pieceBytes = f32.PieceBytes
