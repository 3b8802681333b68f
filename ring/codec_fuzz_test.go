package ring

import (
	"bytes"
	"context"
	"errors"
	"math"
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/nice-flow/nice/internal/f32"
	nicepb "github.com/nice-flow/nice/proto"
)

// The fuzzers of this file feed the ring's decoders what a peer can send:
// the bytes of a RingFrame as gRPC hands them over (in pieces), and the
// RingHello that announces a stream. A frame is either applied exactly (the
// protobuf library reads the same header and payload from it, the header is
// the one expected, the floats are added or copied bit for bit) or refused
// with an error wrapping ErrBadFrame or ErrStaleGeneration, the destination
// untouched.

// maxFuzzFloats bounds the destination so that an iteration stays cheap.
const maxFuzzFloats = 1 << 11

// splitBuffers cuts b into pieces whose lengths the cuts bytes choose (1 to
// 16 bytes each, the rest in one piece), as gRPC may deliver a message.
func splitBuffers(b, cuts []byte) mem.BufferSlice {
	var bs mem.BufferSlice
	for _, c := range cuts {
		if len(b) == 0 {
			break
		}
		n := min(int(c%16)+1, len(b))
		bs = append(bs, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	if len(b) > 0 {
		bs = append(bs, mem.SliceBuffer(bytes.Clone(b)))
	}
	return bs
}

// headerOf is the header of a decoded RingFrame. The protobuf library keeps
// the low 32 bits of a uint32 field's varint, as the codec does; a width of
// 4 is the default written out.
func headerOf(m *nicepb.RingFrame) FrameHeader {
	h := FrameHeader{Generation: m.Generation, Seq: m.Seq, Step: m.Step, Chunk: m.Chunk, Offset: m.Offset, Total: m.Total, Width: m.Width}
	if h.Width == 4 {
		h.Width = 0
	}
	return h
}

// perturb changes one field of h, chosen by which (0: none), so that the
// fuzzer can aim at every check of CheckFrame from a valid frame.
func perturb(h FrameHeader, which uint8) FrameHeader {
	switch which % 9 {
	case 1:
		h.Generation--
	case 2:
		h.Generation++
	case 3:
		h.Seq++
	case 4:
		h.Step++
	case 5:
		h.Chunk++
	case 6:
		h.Offset++
	case 7:
		h.Total++
	case 8: // float32 <-> bfloat16
		if h.Width == 2 {
			h.Width = 0
		} else {
			h.Width = 2
		}
	}
	return h
}

// fuzzDst is a destination of n floats with values that show any change.
func fuzzDst(n int) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = float32(i)*0.75 - 3
	}
	return d
}

func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

// applied is what dst becomes when the payload, of width bytes a float, is
// applied to it with op.
func applied(dst []float32, payload []byte, width int, op Apply) []float32 {
	out := slices.Clone(dst)
	for i := range out {
		var v float32
		if width == 2 {
			v = bf16le(payload[2*i:])
		} else {
			v = f32le(payload[4*i:])
		}
		if op == ApplyCopy {
			out[i] = v
		} else {
			out[i] += v
		}
	}
	return out
}

// checkDecoded checks one decoding of wire into dst against want.
func checkDecoded(t *testing.T, wire []byte, got *inFrame, before []float32, want *FrameHeader) {
	t.Helper()
	if got.err != nil {
		if !errors.Is(got.err, ErrBadFrame) && !errors.Is(got.err, ErrStaleGeneration) {
			t.Fatalf("refused with %v, which is neither ErrBadFrame nor ErrStaleGeneration", got.err)
		}
		if !sameBits(got.dst, before) {
			t.Fatalf("a refused frame (%v) changed the destination", got.err)
		}
		return
	}
	var ref nicepb.RingFrame
	if err := proto.Unmarshal(wire, &ref); err != nil {
		t.Fatalf("the codec accepted a frame the protobuf library refuses: %v", err)
	}
	if h := headerOf(&ref); h != *want || got.h != h {
		t.Fatalf("accepted header %+v; the protobuf library reads %+v; want %+v", got.h, h, *want)
	}
	if len(ref.ProtoReflect().GetUnknown()) != 0 {
		t.Fatalf("accepted a frame with unknown fields")
	}
	w := int(got.h.floatWidth())
	if len(ref.Data) != w*len(before) {
		t.Fatalf("accepted a payload of %d bytes into %d floats of %d bytes", len(ref.Data), len(before), w)
	}
	if exp := applied(before, ref.Data, w, got.op); !sameBits(got.dst, exp) {
		t.Fatalf("the floats applied (op %d) are not the payload's", got.op)
	}
}

func FuzzFrameCodec(f *testing.F) {
	valid := func(h FrameHeader, floats ...float32) []byte {
		data := slices.Clone(f32.Bytes(floats))
		if h.Width == 2 {
			roundBF16(floats)
			data = make([]byte, 2*len(floats))
			packBF16(data, f32.Bytes(floats))
		}
		b, err := proto.Marshal(&nicepb.RingFrame{Generation: h.Generation, Seq: h.Seq, Step: h.Step, Chunk: h.Chunk,
			Offset: h.Offset, Total: h.Total, Data: data, Width: h.Width})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	h := FrameHeader{Generation: 3, Seq: 1, Step: 2, Chunk: 1, Offset: 4, Total: 40}
	f.Add(valid(h, 1, 2, 3), []byte{2, 5, 1}, true, uint8(0), false, uint16(0))
	f.Add(valid(h, 1, 2, 3), []byte{}, true, uint8(0), true, uint16(0))
	f.Add(valid(h, 1, 2, 3), []byte{0, 0, 0, 0}, true, uint8(1), false, uint16(0))
	f.Add(valid(h), []byte{}, true, uint8(0), false, uint16(0))
	half := h
	half.Width = 2
	f.Add(valid(half, 1, 2.5, -3), []byte{1, 3, 1}, true, uint8(0), false, uint16(0))
	f.Add(valid(half, 1, 2.5, -3), []byte{}, true, uint8(8), true, uint16(0))
	f.Add(valid(FrameHeader{}, float32(math.NaN()), float32(math.Inf(1))), []byte{3, 3}, true, uint8(0), false, uint16(0))
	f.Add(append(valid(h, 1), 0x10, 0x01), []byte{}, true, uint8(0), false, uint16(0)) // the header again after the payload
	f.Add([]byte{0x3a, 0x08, 1, 2, 3, 4}, []byte{1}, false, uint8(0), false, uint16(2))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, []byte{}, false, uint8(0), false, uint16(0))
	f.Fuzz(func(t *testing.T, wire, cuts []byte, aimed bool, which uint8, copyOp bool, floats uint16) {
		op := ApplyAdd
		if copyOp {
			op = ApplyCopy
		}
		// The expected header: the frame's own (perturbed) when aimed and
		// the protobuf library can read it, else arbitrary.
		want := FrameHeader{Generation: 3, Seq: 1, Step: 2, Chunk: 1, Offset: 4, Total: 40}
		n := int(floats) % maxFuzzFloats
		var ref nicepb.RingFrame
		if aimed && proto.Unmarshal(wire, &ref) == nil {
			want = perturb(headerOf(&ref), which)
			if w := int(want.floatWidth()); len(ref.Data)%w == 0 && len(ref.Data)/w < maxFuzzFloats {
				n = len(ref.Data) / w
			}
		}
		dst := fuzzDst(n)
		before := slices.Clone(dst)
		in := inFrame{want: &want, dst: dst, op: op}
		in.unmarshal(splitBuffers(wire, cuts))
		checkDecoded(t, wire, &in, before, &want)

		// What a sender writes is read back exactly, however gRPC cuts it
		// (a sender writes only widths that exist).
		if w := want.floatWidth(); w != 2 && w != 4 {
			return
		}
		payload := fuzzDst(n)
		for i := range payload {
			payload[i] *= float32(len(wire)%7) - 2.5
		}
		out := outFrame{h: want, data: f32.Bytes(payload), release: newReleaseTracker()}
		sent := out.marshal()
		whole := sent.Materialize()
		sent.Free()
		in = inFrame{want: &want, dst: slices.Clone(before), op: op}
		in.unmarshal(splitBuffers(whole, cuts))
		if in.err != nil {
			t.Fatalf("a frame as the sender writes it (%d floats, header %+v) is refused: %v", n, want, in.err)
		}
		checkDecoded(t, whole, &in, before, &want)
	})
}

// FuzzRingHello decodes the hello of a stream and offers the stream to an
// accept queue: a stream is accepted only when it is exactly the one the
// member expects, refused with a classified error when it is of the
// expected or an older generation and not that stream, and left pending
// when it is of a newer generation.
func FuzzRingHello(f *testing.F) {
	hello := func(h *nicepb.RingHello) []byte {
		b, err := proto.Marshal(h)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(hello(&nicepb.RingHello{Generation: 4, SenderRank: 1, SenderId: "a", ReceiverId: "b", RingSize: 3}), uint64(4), uint8(1), uint8(3))
	f.Add(hello(&nicepb.RingHello{Generation: 3, SenderRank: 1, SenderId: "a", ReceiverId: "b", RingSize: 3}), uint64(4), uint8(1), uint8(3))
	f.Add(hello(&nicepb.RingHello{Generation: 5, SenderRank: 0, SenderId: "a", ReceiverId: "c", RingSize: 2}), uint64(4), uint8(1), uint8(3))
	f.Add([]byte{0x0a, 0xff}, uint64(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, gen uint64, rank, size uint8) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(helloKey, string(b)))
		id, err := helloOf(ctx)
		var h nicepb.RingHello
		perr := proto.Unmarshal(b, &h)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("hello refused with %v, not ErrBadFrame", err)
			}
			if perr == nil {
				t.Fatalf("hello refused (%v) though the protobuf library reads it", err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("hello accepted though the protobuf library refuses it: %v", perr)
		}
		if id.Generation != h.Generation || id.FromRank != int(h.SenderRank) || id.RingSize != int(h.RingSize) ||
			id.From.ID != h.SenderId || id.To.ID != h.ReceiverId {
			t.Fatalf("hello %v read as %+v", &h, id)
		}
		want := StreamID{Generation: gen, From: Peer{ID: "a"}, FromRank: int(rank), To: Peer{ID: "b"}, RingSize: int(size)}
		q := newAcceptQueue()
		defer q.shutdown(ErrClosed) // stops the wait timer of an offer left pending
		var refused error
		if err := q.offer(&offer{id: id, refuse: func(err error) { refused = err }}); err != nil {
			t.Fatalf("a fresh queue refused an offer: %v", err)
		}
		done, cancel := context.WithCancel(context.Background())
		cancel() // accept looks once and returns
		got, err := q.accept(done, want)
		match := want.match(id)
		switch {
		case match == nil && (err != nil || got == nil):
			t.Fatalf("the expected stream %+v was not accepted: %v", id, err)
		case match != nil && got != nil:
			t.Fatalf("stream %+v accepted for %+v", id, want)
		case match != nil && id.Generation <= want.Generation:
			if refused == nil {
				t.Fatalf("stream %+v neither accepted nor refused by a member expecting %+v", id, want)
			}
			if !errors.Is(refused, ErrBadFrame) && !errors.Is(refused, ErrStaleGeneration) {
				t.Fatalf("stream refused with %v, which is not classified", refused)
			}
		case match != nil && refused != nil:
			t.Fatalf("a stream of the newer generation %d was refused by a member of %d: %v", id.Generation, want.Generation, refused)
		}
	})
}
