package f32

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestCombineCRCEqualsTheWholeMessage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, lens := range [][2]int{{0, 0}, {0, 5}, {5, 0}, {1, 1}, {3, 4093}, {4096, 4096}, {70001, 129}, {1, 1 << 20}} {
		a, b := randomBytes(rng, lens[0]), randomBytes(rng, lens[1])
		whole := crc32.Checksum(append(append([]byte{}, a...), b...), castagnoli)
		got := CombineCRC(crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli), len(b))
		if got != whole {
			t.Errorf("|A| %d, |B| %d: combined %08x, the whole message's CRC is %08x", lens[0], lens[1], got, whole)
		}
	}
}

// TestCRCInPiecesIsTheWholeCRC: over a buffer of several pieces, and
// continued from a CRC, it is the CRC-32C of all the bytes.
func TestCRCInPiecesIsTheWholeCRC(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	f := make([]float32, 3*PieceBytes/4+7)
	for i := range f {
		f[i] = float32(rng.NormFloat64())
	}
	if got, want := CRC(0, f), crc32.Checksum(Bytes(f), castagnoli); got != want {
		t.Errorf("CRC %08x, crc32.Checksum %08x", got, want)
	}
	head, tail := f[:1000], f[1000:]
	if got, want := CRC(CRC(0, head), tail), crc32.Checksum(Bytes(f), castagnoli); got != want {
		t.Errorf("continued CRC %08x, crc32.Checksum %08x", got, want)
	}
	if Bytes(nil) != nil || CRC(0, nil) != 0 {
		t.Errorf("empty buffer: Bytes %v, CRC %08x", Bytes(nil), CRC(0, nil))
	}
}
