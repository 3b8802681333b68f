package ring

import (
	"encoding/binary"
	"math"
)

// FrameHeader says where the floats of a frame belong. Its fields are those
// of nicepb.RingFrame without the payload.
type FrameHeader struct {
	Generation uint64
	Seq        uint64 // collective number within the generation, from 1
	Step       uint32 // 0..N-2 reduce-scatter, N-1..2N-3 all-gather
	Chunk      uint32
	Offset     uint64 // index of the frame's first float within its chunk
	Total      uint64 // floats in the whole buffer
	Width      uint32 // bytes a float takes on the wire: 4 (also when 0) or 2 (bfloat16)
}

// floatWidth is h.Width with 0 read as 4.
func (h *FrameHeader) floatWidth() uint32 {
	if h.Width == 0 {
		return 4
	}
	return h.Width
}

// Apply says what a receiver does with the floats of a frame.
type Apply uint8

const (
	// ApplyAdd adds the frame's floats to the destination (reduce-scatter).
	ApplyAdd Apply = iota
	// ApplyCopy overwrites the destination (all-gather).
	ApplyCopy
)

// CheckFrame compares a received header and payload length (in floats)
// with what the receiver expects. Both transports call it before they touch
// the destination, so a refused frame changes nothing.
func CheckFrame(got *FrameHeader, gotFloats int, want *FrameHeader, wantFloats int) error {
	switch {
	case got.Generation < want.Generation:
		return &FrameError{Field: "generation", Got: got.Generation, Want: want.Generation, Kind: ErrStaleGeneration}
	case got.Generation != want.Generation:
		return &FrameError{Field: "generation", Got: got.Generation, Want: want.Generation, Kind: ErrBadFrame}
	case got.Seq != want.Seq:
		return &FrameError{Field: "collective", Got: got.Seq, Want: want.Seq, Kind: ErrBadFrame}
	case got.floatWidth() != want.floatWidth():
		return &FrameError{Field: "bytes per float", Got: uint64(got.floatWidth()), Want: uint64(want.floatWidth()), Kind: ErrBadFrame}
	case got.Total != want.Total:
		return &FrameError{Field: "total length", Got: got.Total, Want: want.Total, Kind: ErrBadFrame}
	case got.Step != want.Step:
		return &FrameError{Field: "step", Got: uint64(got.Step), Want: uint64(want.Step), Kind: ErrBadFrame}
	case got.Chunk != want.Chunk:
		return &FrameError{Field: "chunk", Got: uint64(got.Chunk), Want: uint64(want.Chunk), Kind: ErrBadFrame}
	case got.Offset != want.Offset:
		return &FrameError{Field: "offset", Got: got.Offset, Want: want.Offset, Kind: ErrBadFrame}
	case gotFloats != wantFloats:
		return &FrameError{Field: "length", Got: uint64(gotFloats), Want: uint64(wantFloats), Kind: ErrBadFrame}
	}
	return nil
}

func f32le(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }
