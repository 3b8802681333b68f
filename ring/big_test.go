package ring

import "testing"

// killFloats is the buffer of the kill and stall tests: long enough that
// the fault strikes mid-collective, short enough for the race detector.
func killFloats() int {
	if raceEnabled {
		return 3_000_000
	}
	return 8_000_000
}

// bigCase says for which ring sizes the 19.2 M-float case runs: every size
// in memory, a few over gRPC (each float crosses loopback 2(N-1)/N times
// per run, on a machine shared with other work); fewer under the race
// detector, which makes every float's add ten times slower (the plain run
// covers the rest).
func bigCase(transport string, n int) bool {
	if raceEnabled {
		return transport == "inmem" && n == 3
	}
	if transport == "grpc" {
		return n == 2 || n == 3 || n == 4 || n == 8
	}
	if transport == "grpc-local" {
		return n == 4
	}
	return true
}

func TestLayout(t *testing.T) {
	for n := 1; n <= 8; n++ {
		for _, p := range []int{0, 1, n - 1, n, n + 1, 10007} {
			l := newLayout(p, n)
			next := 0
			for i := range n {
				start, length := l.chunk(i)
				if start != next {
					t.Fatalf("P=%d N=%d chunk %d starts at %d, want %d", p, n, i, start, next)
				}
				if want := p / n; length != want && length != want+1 || (length == want+1) != (i < p%n) {
					t.Fatalf("P=%d N=%d chunk %d has %d floats", p, n, i, length)
				}
				next += length
			}
			if next != p {
				t.Fatalf("P=%d N=%d: chunks cover %d floats", p, n, next)
			}
			for r := range n {
				for s := 1; s < l.steps(); s++ {
					if l.sendChunk(r, s) != l.recvChunk(r, s-1) {
						t.Fatalf("N=%d rank %d: step %d sends chunk %d, step %d received %d", n, r, s, l.sendChunk(r, s), s-1, l.recvChunk(r, s-1))
					}
				}
				// After reduce-scatter, rank r owns chunk r+1, which it sends first in all-gather.
				if n > 1 && l.sendChunk(r, n-1) != mod(r+1, n) {
					t.Fatalf("N=%d rank %d: all-gather starts with chunk %d", n, r, l.sendChunk(r, n-1))
				}
			}
		}
	}
}
