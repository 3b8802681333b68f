// Package statexfer moves an encoded training state (train.State, some
// 230 MB for the full model) over the StateService gRPC stream, in chunks of
// ChunkBytes, checking offsets and the total so a truncated or reordered
// transfer is refused rather than loaded.
package statexfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// ChunkBytes is the payload of one StateChunk.
const ChunkBytes = 4 << 20

// MaxStateBytes bounds a transfer, so a corrupt total cannot make the
// receiver allocate without limit.
const MaxStateBytes = 8 << 30

// ErrUnavailable is returned by a Source that does not hold the state asked for.
var ErrUnavailable = errors.New("state not available here")

// Source provides states to send: it writes the encoded state at pos (or its
// last snapshot) to w, after announcing its length through size.
type Source interface {
	WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), w io.Writer) error
}

// Server adapts a Source to the StateService.
type Server struct {
	nicepb.UnimplementedStateServiceServer
	Src Source
}

// FetchState streams the requested state.
func (s *Server) FetchState(req *nicepb.FetchStateRequest, stream nicepb.StateService_FetchStateServer) error {
	cw := &chunkWriter{stream: stream, buf: make([]byte, 0, ChunkBytes)}
	err := s.Src.WriteState(stream.Context(), req.Position, req.Snapshot, func(n int64) { cw.total = n }, cw)
	if errors.Is(err, ErrUnavailable) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return status.Errorf(codes.Internal, "sending state: %v", err)
	}
	if err := cw.flush(); err != nil {
		return err
	}
	if cw.offset != cw.total {
		return status.Errorf(codes.Internal, "sent %d bytes of a state announced as %d", cw.offset, cw.total)
	}
	return nil
}

type chunkWriter struct {
	stream        nicepb.StateService_FetchStateServer
	buf           []byte
	total, offset int64
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), cap(c.buf)-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == cap(c.buf) {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if err := c.stream.Send(&nicepb.StateChunk{Total: c.total, Offset: c.offset, Data: c.buf}); err != nil {
		return err
	}
	c.offset += int64(len(c.buf))
	c.buf = c.buf[:0]
	return nil
}

// Fetch downloads the state at pos (or the source's snapshot at pos) from the
// StateService at conn and returns the encoded bytes. It fails with an error
// wrapping ErrUnavailable when the source does not hold that state.
//
// A transfer that stalls fails: the first chunk must come within
// FirstChunkWait (a snapshot is taken when the commit asking for it is
// applied), each later one within ChunkWait. A source that vanished without
// closing its connection thus holds nobody for long.
func Fetch(ctx context.Context, conn grpc.ClientConnInterface, pos *nicepb.Position, snapshot bool) ([]byte, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(FirstChunkWait, func() {
		cancel(fmt.Errorf("no state from the source within %v", FirstChunkWait))
	})
	defer idle.Stop()
	stream, err := nicepb.NewStateServiceClient(conn).FetchState(ctx, &nicepb.FetchStateRequest{Position: pos, Snapshot: snapshot},
		grpc.MaxCallRecvMsgSize(2*ChunkBytes))
	if err != nil {
		return nil, fmt.Errorf("fetching state: %w", err)
	}
	var buf bytes.Buffer
	var total int64 = -1
	for {
		c, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			if status.Code(err) == codes.FailedPrecondition {
				return nil, fmt.Errorf("fetching state at step %d: %w", pos.GetStep(), unavailableError(status.Convert(err).Message()))
			}
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				err = cause
			}
			return nil, fmt.Errorf("fetching state at step %d: %w", pos.GetStep(), err)
		}
		idle.Reset(ChunkWait)
		if total < 0 {
			total = c.Total
			if total < 0 || total > MaxStateBytes {
				return nil, fmt.Errorf("fetching state: announced size %d is out of range", total)
			}
			buf.Grow(int(total))
		}
		if c.Total != total || c.Offset != int64(buf.Len()) || c.Offset+int64(len(c.Data)) > total {
			return nil, fmt.Errorf("fetching state: chunk at offset %d (total %d) after %d of %d bytes", c.Offset, c.Total, buf.Len(), total)
		}
		buf.Write(c.Data)
	}
	if total < 0 {
		return nil, fmt.Errorf("fetching state at step %d: the source sent nothing", pos.GetStep())
	}
	if int64(buf.Len()) != total {
		return nil, fmt.Errorf("fetching state: got %d of %d bytes", buf.Len(), total)
	}
	return buf.Bytes(), nil
}

// How long Fetch waits for the first chunk of a state and for each later one.
var (
	FirstChunkWait = 40 * time.Second
	ChunkWait      = 10 * time.Second
)

// ToPB converts a training position to its message.
func ToPB(p train.Position) *nicepb.Position {
	return &nicepb.Position{Step: p.Step, Epoch: int32(p.Epoch), StepInEpoch: int32(p.StepInEpoch)}
}

// FromPB converts a position message (nil is step 0).
func FromPB(p *nicepb.Position) train.Position {
	if p == nil {
		return train.Position{}
	}
	return train.Position{Step: p.Step, Epoch: int(p.Epoch), StepInEpoch: int(p.StepInEpoch)}
}

// unavailableError carries the source's own words for ErrUnavailable.
type unavailableError string

func (e unavailableError) Error() string { return string(e) }
func (e unavailableError) Unwrap() error { return ErrUnavailable }
