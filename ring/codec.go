package ring

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/nice-flow/nice/internal/f32"
)

// codecName is the gRPC content-subtype of ring streams.
const codecName = "nice-ring"

func init() { encoding.RegisterCodecV2(frameCodec{}) }

// frameCodec writes and reads nicepb.RingFrame's wire format by hand so
// that the payload is neither copied into a message nor out of one: an
// outFrame's payload is the sender's float memory itself, and an inFrame's
// payload is added or copied from gRPC's receive buffers straight into the
// receiver's floats, after its header was checked. Other messages (acks)
// go through the protobuf library.
type frameCodec struct{}

func (frameCodec) Name() string { return codecName }

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *outFrame:
		return m.marshal(), nil
	case proto.Message:
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return nil, fmt.Errorf("ring codec: cannot marshal %T", v)
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *inFrame:
		m.unmarshal(data)
		return nil
	case proto.Message:
		b := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer b.Free()
		return proto.Unmarshal(b.ReadOnlyData(), m)
	}
	return fmt.Errorf("ring codec: cannot unmarshal into %T", v)
}

// Field numbers of nicepb.RingFrame.
const (
	fieldGeneration = 1
	fieldSeq        = 2
	fieldStep       = 3
	fieldChunk      = 4
	fieldOffset     = 5
	fieldTotal      = 6
	fieldData       = 7
	fieldWidth      = 8
)

// outFrame is a RingFrame to send, its payload viewed in place.
type outFrame struct {
	h    FrameHeader
	data []byte
	// release learns when gRPC lets go of a payload it was lent.
	release *releaseTracker
}

// releaseTracker counts the payloads lent to gRPC and not yet given back.
// It is the mem.BufferPool of those payloads: gRPC "returns" a payload
// with Put once it wrote or dropped it.
type releaseTracker struct {
	lent     atomic.Int64
	returned chan struct{} // signalled (never blocking) on every Put
}

func newReleaseTracker() *releaseTracker {
	return &releaseTracker{returned: make(chan struct{}, 1)}
}

func (r *releaseTracker) Get(size int) *[]byte {
	b := make([]byte, size)
	return &b
}

func (r *releaseTracker) Put(*[]byte) {
	r.lent.Add(-1)
	select {
	case r.returned <- struct{}{}:
	default:
	}
}

// wait waits until every payload was given back, or until the deadline.
func (r *releaseTracker) wait(deadline time.Time) bool {
	if r.lent.Load() == 0 {
		return true
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for r.lent.Load() > 0 {
		select {
		case <-r.returned:
		case <-t.C:
			return false
		}
	}
	return true
}

// marshal encodes the header into a pooled buffer, freed by gRPC once
// written, and appends the payload as a buffer over the caller's memory,
// lent to gRPC until it calls f.release.Put. (Payloads too small for gRPC to
// track are copied after the header instead.) A bfloat16 payload is packed
// into a pooled buffer that gRPC frees, so nothing is lent. Zero fields are
// left out, as the protobuf library does.
func (f *outFrame) marshal() mem.BufferSlice {
	pool := mem.DefaultBufferPool()
	if f.h.Width == 2 {
		return f.marshalHalf(pool)
	}
	small := mem.IsBelowBufferPoolingThreshold(len(f.data))
	size := 96 // the header's fields and the payload's tag, at most 84 bytes
	if small {
		size += len(f.data)
	}
	hp := pool.Get(size)
	b := f.header((*hp)[:0], len(f.data))
	if small {
		*hp = append(b, f.data...)
		return mem.BufferSlice{mem.NewBuffer(hp, pool)}
	}
	*hp = b
	view := f.data // escapes: a *[]byte per frame, which gRPC hands back to Put
	f.release.lent.Add(1)
	return mem.BufferSlice{mem.NewBuffer(hp, pool), mem.NewBuffer(&view, f.release)}
}

// header appends the frame's header fields, then the payload's tag and
// length for a payload of n bytes.
func (f *outFrame) header(b []byte, n int) []byte {
	for _, kv := range [...]struct {
		num protowire.Number
		v   uint64
	}{
		{fieldGeneration, f.h.Generation}, {fieldSeq, f.h.Seq}, {fieldStep, uint64(f.h.Step)},
		{fieldChunk, uint64(f.h.Chunk)}, {fieldOffset, f.h.Offset}, {fieldTotal, f.h.Total},
		{fieldWidth, uint64(f.h.Width)},
	} {
		if kv.v != 0 {
			b = protowire.AppendTag(b, kv.num, protowire.VarintType)
			b = protowire.AppendVarint(b, kv.v)
		}
	}
	if n > 0 {
		b = protowire.AppendTag(b, fieldData, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
	}
	return b
}

// marshalHalf encodes a frame whose floats (rounded to bfloat16 by the
// collective) travel as their upper halves.
func (f *outFrame) marshalHalf(pool mem.BufferPool) mem.BufferSlice {
	n := len(f.data) / 2
	hp := pool.Get(96)
	*hp = f.header((*hp)[:0], n)
	if n == 0 {
		return mem.BufferSlice{mem.NewBuffer(hp, pool)}
	}
	pp := pool.Get(n)
	packBF16(*pp, f.data)
	return mem.BufferSlice{mem.NewBuffer(hp, pool), mem.NewBuffer(pp, pool)}
}

// inFrame receives one RingFrame: the receiver sets want, dst and op; the
// codec fills h and, when CheckFrame accepts the frame, applies it to dst.
// A refused frame leaves dst alone and sets err.
type inFrame struct {
	want *FrameHeader
	dst  []float32
	op   Apply

	h   FrameHeader
	err error
}

var errPayloadNotLast = fmt.Errorf("%w: the payload is not the last field of the frame", ErrBadFrame)

func (f *inFrame) unmarshal(data mem.BufferSlice) {
	f.h = FrameHeader{}
	f.err = nil
	r := bufCursor{bufs: data}
	for !r.done() {
		tag, err := r.varint()
		if err != nil {
			f.err = err
			return
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		switch {
		case typ == protowire.VarintType && (num >= fieldGeneration && num <= fieldTotal || num == fieldWidth):
			v, err := r.varint()
			if err != nil {
				f.err = err
				return
			}
			switch num {
			case fieldGeneration:
				f.h.Generation = v
			case fieldSeq:
				f.h.Seq = v
			case fieldStep:
				f.h.Step = uint32(v)
			case fieldChunk:
				f.h.Chunk = uint32(v)
			case fieldOffset:
				f.h.Offset = v
			case fieldTotal:
				f.h.Total = v
			case fieldWidth:
				if v != 2 && v != 4 {
					f.err = fmt.Errorf("%w: %d bytes per float: only 4 (float32) and 2 (bfloat16) exist", ErrBadFrame, v)
					return
				}
				f.h.Width = uint32(v)
				if v == 4 {
					f.h.Width = 0 // the default, written out
				}
			}
		case typ == protowire.BytesType && num == fieldData:
			n, err := r.varint()
			if err != nil {
				f.err = err
				return
			}
			w := uint64(f.h.floatWidth())
			if n%w != 0 || n > uint64(r.remaining()) {
				f.err = fmt.Errorf("%w: payload of %d bytes is not whole %d-byte floats or overruns the message of %d", ErrBadFrame, n, w, r.remaining())
				return
			}
			// A field after the payload could change the header that was
			// checked, or fail the frame after its floats were applied.
			if n != uint64(r.remaining()) {
				f.err = errPayloadNotLast
				return
			}
			if f.err = CheckFrame(&f.h, int(n/w), f.want, len(f.dst)); f.err != nil {
				return
			}
			if w == 2 {
				r.applyHalf(f.dst, f.op)
			} else {
				r.apply(f.dst, f.op)
			}
			return
		default:
			f.err = fmt.Errorf("%w: unexpected field %d of wire type %d", ErrBadFrame, num, typ)
			return
		}
	}
	// An empty payload is a frame of zero floats.
	f.err = CheckFrame(&f.h, 0, f.want, len(f.dst))
}

var errTruncated = fmt.Errorf("%w: truncated message", ErrBadFrame)

// bufCursor reads a BufferSlice front to back without joining its buffers.
type bufCursor struct {
	bufs mem.BufferSlice
	cur  []byte
	i    int
}

func (r *bufCursor) fill() bool {
	for len(r.cur) == 0 {
		if r.i >= len(r.bufs) {
			return false
		}
		r.cur = r.bufs[r.i].ReadOnlyData()
		r.i++
	}
	return true
}

func (r *bufCursor) done() bool { return !r.fill() }

func (r *bufCursor) remaining() int {
	n := len(r.cur)
	for _, b := range r.bufs[r.i:] {
		n += b.Len()
	}
	return n
}

var errVarintOverflow = fmt.Errorf("%w: varint overflows 64 bits", ErrBadFrame)

// varint reads a base-128 varint as the protobuf library does: at most ten
// bytes, the tenth carrying only the top bit.
func (r *bufCursor) varint() (uint64, error) {
	var v uint64
	for i := range 10 {
		if !r.fill() {
			return 0, errTruncated
		}
		c := r.cur[0]
		r.cur = r.cur[1:]
		if i == 9 && c > 1 {
			return 0, errVarintOverflow
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, errVarintOverflow
}

// apply adds or copies the next 4*len(dst) bytes into dst. A float may be
// split between two buffers; its bytes are gathered in carry.
func (r *bufCursor) apply(dst []float32, op Apply) {
	if op == ApplyCopy {
		out := f32.Bytes(dst)
		for len(out) > 0 && r.fill() {
			n := copy(out, r.cur)
			out, r.cur = out[n:], r.cur[n:]
		}
		return
	}
	var carry [4]byte
	nc := 0
	for len(dst) > 0 && r.fill() {
		if nc > 0 {
			k := copy(carry[nc:], r.cur)
			nc += k
			r.cur = r.cur[k:]
			if nc < 4 {
				continue
			}
			dst[0] += f32le(carry[:])
			dst = dst[1:]
			nc = 0
			continue
		}
		whole := min(len(r.cur)/4, len(dst))
		addBytes(dst[:whole], r.cur[:4*whole])
		dst, r.cur = dst[whole:], r.cur[4*whole:]
		if len(dst) > 0 && len(r.cur) > 0 && len(r.cur) < 4 {
			nc = copy(carry[:], r.cur)
			r.cur = r.cur[nc:]
		}
	}
}

// applyHalf adds or copies the next 2*len(dst) bytes, bfloat16s, into dst.
// A value may be split between two buffers.
func (r *bufCursor) applyHalf(dst []float32, op Apply) {
	for len(dst) > 0 && r.fill() {
		if len(r.cur) == 1 {
			carry := [2]byte{r.cur[0]}
			r.cur = nil
			if !r.fill() {
				return
			}
			carry[1] = r.cur[0]
			r.cur = r.cur[1:]
			if v := bf16le(carry[:]); op == ApplyCopy {
				dst[0] = v
			} else {
				dst[0] += v
			}
			dst = dst[1:]
			continue
		}
		whole := min(len(r.cur)/2, len(dst))
		src := r.cur[:2*whole]
		if op == ApplyCopy {
			for i := range whole {
				dst[i] = math.Float32frombits(uint32(src[2*i])<<16 | uint32(src[2*i+1])<<24)
			}
		} else {
			for i := range whole {
				dst[i] += math.Float32frombits(uint32(src[2*i])<<16 | uint32(src[2*i+1])<<24)
			}
		}
		dst, r.cur = dst[whole:], r.cur[2*whole:]
	}
}
