package statexfer

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzChunk is one chunk of a fuzzed transfer.
type fuzzChunk struct {
	total, offset int64
	data          []byte
}

// decodeChunks turns fuzz bytes into a chunk sequence. Each chunk takes a
// control byte: bit 0 gives it the total of the first chunk (else eight
// bytes of total follow), bit 1 starts it where the previous ones ended
// (else eight bytes of offset follow); a length byte follows, and as many
// bytes of data as it says (or as remain). The fuzzer can thus write
// both well-formed transfers and every kind of deviation.
func decodeChunks(script []byte) []fuzzChunk {
	var out []fuzzChunk
	var first, sent int64 = -1, 0
	take := func(n int) []byte {
		n = min(n, len(script))
		b := script[:n]
		script = script[n:]
		return b
	}
	word := func() int64 {
		var b [8]byte
		copy(b[:], take(8))
		return int64(binary.LittleEndian.Uint64(b[:]))
	}
	for len(script) > 0 && len(out) < 64 {
		ctl := take(1)[0]
		c := fuzzChunk{total: first, offset: sent}
		if ctl&1 == 0 || first < 0 {
			c.total = word()
		}
		if ctl&2 == 0 {
			c.offset = word()
		}
		n := 0
		if l := take(1); len(l) == 1 {
			n = int(l[0])
		}
		c.data = take(n)
		if first < 0 {
			first = c.total
		}
		sent += int64(len(c.data))
		out = append(out, c)
	}
	return out
}

// FuzzStateChunks feeds a receiver the chunk sequences a source could
// send. Only a complete, in-order transfer whose total lies in the
// expected range is returned, equal to the data sent; the receiver never
// allocates more than the range allows; nothing panics.
func FuzzStateChunks(f *testing.F) {
	// A well-formed transfer of 3 chunks (10+10+5 bytes, total 25).
	good := []byte{0, 25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10}
	good = append(good, bytes.Repeat([]byte{'a'}, 10)...)
	good = append(good, 3, 10)
	good = append(good, bytes.Repeat([]byte{'b'}, 10)...)
	good = append(good, 3, 5, 'c', 'c', 'c', 'c', 'c')
	f.Add(uint16(20), uint16(10), good)
	f.Add(uint16(30), uint16(10), good)        // total below the range
	f.Add(uint16(1), uint16(10), good[:30])    // stops early
	f.Add(uint16(0), uint16(100), []byte{3})   // no total at all
	f.Add(uint16(0), uint16(0xffff), []byte{}) // nothing sent
	f.Fuzz(func(t *testing.T, lo, span uint16, script []byte) {
		want := Expect{Min: int64(lo), Max: int64(lo) + int64(span)}
		chunks := decodeChunks(script)
		r := newReceiver(want)
		var fed []fuzzChunk
		var refused error
		for _, c := range chunks {
			fed = append(fed, c)
			if refused = r.add(c.total, c.offset, c.data); refused != nil {
				break
			}
		}
		if int64(cap(r.buf)) > want.Max {
			t.Fatalf("the receiver allocated %d bytes, the range allows %d", cap(r.buf), want.Max)
		}
		got, err := r.complete()
		ok := refused == nil && err == nil
		if valid := wellFormed(fed, want); ok != valid {
			t.Fatalf("receiver accepted=%v (add: %v, complete: %v), a well-formed transfer=%v: %+v", ok, refused, err, valid, fed)
		}
		if !ok {
			return
		}
		var sent []byte
		for _, c := range fed {
			sent = append(sent, c.data...)
		}
		if !bytes.Equal(got, sent) {
			t.Fatalf("the receiver returned %d bytes, the chunks held %d others", len(got), len(sent))
		}
	})
}

// wellFormed is the specification: chunks of 1 to ChunkBytes bytes, each
// announcing the same total within the range and starting where the
// previous one ended, adding up to the total exactly.
func wellFormed(chunks []fuzzChunk, want Expect) bool {
	if len(chunks) == 0 {
		return false
	}
	total := chunks[0].total
	if total < want.Min || total > want.Max {
		return false
	}
	var at int64
	for _, c := range chunks {
		if c.total != total || c.offset != at || len(c.data) == 0 || len(c.data) > ChunkBytes || at+int64(len(c.data)) > total {
			return false
		}
		at += int64(len(c.data))
	}
	return at == total
}
