// Package statexfer moves an encoded training state (train.State, some
// 230 MB for the full model) over the StateService gRPC stream, in chunks of
// ChunkBytes.
//
// What it promises:
//   - The receiver (Fetch) returns only a complete, in-order transfer whose
//     size lies in the range it expects (Expect, from the configuration it
//     runs): a total outside it is refused before anything is allocated,
//     and a chunk that is empty, too long, out of order, past the total or
//     announcing another total ends the transfer. Errors name the source
//     and the sizes.
//   - A transfer that stalls fails on the receiver's side (FirstChunkWait,
//     ChunkWait) and on the source's (Server: a chunk not taken within
//     ServeLimits.SendTimeout, a transfer longer than TransferTimeout).
//   - A Server serves at most ServeLimits.MaxTransfers transfers at once
//     and refuses more with ResourceExhausted, so what a peer can make it
//     hold is bounded.
package statexfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// ChunkBytes is the payload of one StateChunk.
const ChunkBytes = 4 << 20

// MaxChunkMessage is the largest StateChunk on the wire (a full payload,
// its two sizes and the field tags, with room to spare): the message limit
// of a state source's sends and of a receiver's receives.
const MaxChunkMessage = ChunkBytes + 1<<10

// MaxRequestMessage bounds a FetchStateRequest (a position and a flag).
const MaxRequestMessage = 1 << 10

// ErrUnavailable is returned by a Source that does not hold the state asked for.
var ErrUnavailable = errors.New("state not available here")

// Source provides states to send: it writes the encoded state at pos (or its
// last snapshot) to w, after announcing its length through size. It must
// not hold anything that training needs while it writes: w may block for
// as long as the receiver takes to read (ServeLimits.SendTimeout per chunk).
type Source interface {
	WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), w io.Writer) error
}

// ServeLimits bound what the receivers of a Server can make it hold. Zero
// fields take the defaults (DefaultServeLimits).
type ServeLimits struct {
	// MaxTransfers is how many transfers run at once; more are refused with
	// ResourceExhausted. Each may hold a copy of the state (a worker serves
	// from a copy, so that training goes on), so it is small.
	MaxTransfers int
	// TransferTimeout bounds a whole transfer, the wait for a snapshot
	// included: the receivers give up after as long.
	TransferTimeout time.Duration
	// SendTimeout bounds the send of one chunk: a receiver that stops
	// reading releases the transfer (and its copy) after this long.
	SendTimeout time.Duration
}

// DefaultServeLimits returns the limits a zero ServeLimits stands for: two
// transfers at once (a joining worker and a checkpoint), two minutes each
// (as long as the workers and the coordinator wait for one), ten seconds
// per chunk (as long as Fetch waits for one).
func DefaultServeLimits() ServeLimits {
	return ServeLimits{MaxTransfers: 2, TransferTimeout: 2 * time.Minute, SendTimeout: ChunkWait}
}

func (l ServeLimits) orDefaults() ServeLimits {
	d := DefaultServeLimits()
	if l.MaxTransfers <= 0 {
		l.MaxTransfers = d.MaxTransfers
	}
	if l.TransferTimeout <= 0 {
		l.TransferTimeout = d.TransferTimeout
	}
	if l.SendTimeout <= 0 {
		l.SendTimeout = d.SendTimeout
	}
	return l
}

// Server adapts a Source to the StateService.
type Server struct {
	nicepb.UnimplementedStateServiceServer
	Src    Source
	Limits ServeLimits
	// Logger receives a line for each transfer abandoned by its receiver
	// (nil: slog.Default()).
	Logger *slog.Logger

	active atomic.Int64   // transfers whose sender still runs
	wg     sync.WaitGroup // their senders
}

// FetchState streams the requested state. The chunks are sent by a
// goroutine of their own: a send blocked by a receiver that does not read
// can only be interrupted by ending the call, which this handler does when
// a limit is reached; the sender then returns at once.
func (s *Server) FetchState(req *nicepb.FetchStateRequest, stream nicepb.StateService_FetchStateServer) error {
	lim := s.Limits.orDefaults()
	if n := s.active.Add(1); n > int64(lim.MaxTransfers) {
		s.active.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "this source already serves %d state transfers, its limit: retry later", lim.MaxTransfers)
	}
	ctx, cancel := context.WithTimeoutCause(stream.Context(), lim.TransferTimeout,
		fmt.Errorf("the transfer took longer than its limit of %v", lim.TransferTimeout))
	cw := &chunkWriter{stream: stream, buf: make([]byte, 0, ChunkBytes), stalled: make(chan struct{})}
	cw.watch = time.AfterFunc(time.Hour, func() { cw.stallOnce.Do(func() { close(cw.stalled) }) })
	cw.watch.Stop()
	cw.sendTimeout = lim.SendTimeout
	// The sender's result, unless it failed because ctx ended (then nil).
	done := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.active.Add(-1)
		defer cancel()
		err := s.send(ctx, req, cw)
		if err != nil && ctx.Err() != nil {
			return // the handler reports why ctx ended
		}
		done <- err
	}()
	var why string
	select {
	case err := <-done:
		return err
	case <-cw.stalled:
		why = fmt.Sprintf("a chunk was not taken within %v: the receiver stopped reading", lim.SendTimeout)
	case <-ctx.Done():
		why = context.Cause(ctx).Error()
	}
	select {
	case err := <-done: // the sender ended first (it cancels ctx when it does)
		return err
	default:
	}
	if err := stream.Context().Err(); err != nil {
		return status.FromContextError(err).Err() // the receiver went away
	}
	from := "unknown"
	if p, ok := peer.FromContext(stream.Context()); ok {
		from = p.Addr.String()
	}
	s.logger().Warn("state transfer abandoned", "to", from, "step", req.GetPosition().GetStep(), "sent_bytes", cw.sent.Load(), "why", why)
	return status.Errorf(codes.DeadlineExceeded, "state transfer abandoned after %d bytes: %s", cw.sent.Load(), why)
}

// send writes the state through cw and says how it ended.
func (s *Server) send(ctx context.Context, req *nicepb.FetchStateRequest, cw *chunkWriter) error {
	err := s.Src.WriteState(ctx, req.Position, req.Snapshot, func(n int64) { cw.total = n }, cw)
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

// Wait waits until the senders of transfers that ended have returned (a
// server that stopped has ended every transfer).
func (s *Server) Wait() { s.wg.Wait() }

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

type chunkWriter struct {
	stream        nicepb.StateService_FetchStateServer
	buf           []byte
	total, offset int64
	sent          atomic.Int64 // offset, readable by the handler

	sendTimeout time.Duration
	watch       *time.Timer // closes stalled when a send overruns
	stallOnce   sync.Once
	stalled     chan struct{}
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
	c.watch.Reset(c.sendTimeout)
	err := c.stream.Send(&nicepb.StateChunk{Total: c.total, Offset: c.offset, Data: c.buf})
	c.watch.Stop()
	if err != nil {
		return err
	}
	c.offset += int64(len(c.buf))
	c.sent.Store(c.offset)
	c.buf = c.buf[:0]
	return nil
}

// Expect is the size range of the encoded state a receiver accepts.
type Expect struct{ Min, Max int64 }

// ExpectConfig is the range of the states of a run with configuration c
// (train.EncodedLenRange).
func ExpectConfig(c train.Config) (Expect, error) {
	lo, hi, err := train.EncodedLenRange(c)
	return Expect{Min: lo, Max: hi}, err
}

// Request names the state to fetch.
type Request struct {
	// Source is the address of the source, named in errors.
	Source string
	// Position is the state wanted.
	Position *nicepb.Position
	// Snapshot asks for the source's snapshot at Position rather than its
	// live state.
	Snapshot bool
	// Size is the range of sizes accepted (see ExpectConfig).
	Size Expect
}

// Fetch downloads the state req names from the StateService at conn and
// returns the encoded bytes. It fails with an error wrapping ErrUnavailable
// when the source does not hold that state.
//
// A transfer that stalls fails: the first chunk must come within
// FirstChunkWait (a snapshot is taken when the commit asking for it is
// applied), each later one within ChunkWait. A source that vanished without
// closing its connection thus holds nobody for long.
func Fetch(ctx context.Context, conn grpc.ClientConnInterface, req Request) ([]byte, error) {
	what := fmt.Sprintf("fetching the state at step %d from %s", req.Position.GetStep(), req.Source)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(FirstChunkWait, func() {
		cancel(fmt.Errorf("no state from the source within %v", FirstChunkWait))
	})
	defer idle.Stop()
	stream, err := nicepb.NewStateServiceClient(conn).FetchState(ctx, &nicepb.FetchStateRequest{Position: req.Position, Snapshot: req.Snapshot},
		grpc.MaxCallRecvMsgSize(MaxChunkMessage), grpc.MaxCallSendMsgSize(MaxRequestMessage))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	rc := newReceiver(req.Size)
	for {
		c, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			if status.Code(err) == codes.FailedPrecondition {
				return nil, fmt.Errorf("%s: %w", what, unavailableError(status.Convert(err).Message()))
			}
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				err = cause
			}
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		idle.Reset(ChunkWait)
		if err := rc.add(c.Total, c.Offset, c.Data); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	b, err := rc.complete()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// receiver checks and joins the chunks of one transfer: the first chunk's
// total must lie in the expected range (only then is the buffer allocated),
// every chunk must carry that total, hold data, and start where the
// previous one ended without passing the total.
type receiver struct {
	want  Expect
	total int64 // -1 until the first chunk
	buf   []byte
}

func newReceiver(want Expect) *receiver { return &receiver{want: want, total: -1} }

func (r *receiver) add(total, offset int64, data []byte) error {
	if r.total < 0 {
		if total < r.want.Min || total > r.want.Max {
			return fmt.Errorf("the source announced a state of %d bytes; a state of this run has %d to %d", total, r.want.Min, r.want.Max)
		}
		r.total = total
		r.buf = make([]byte, 0, total)
	}
	got := int64(len(r.buf))
	switch {
	case total != r.total:
		return fmt.Errorf("a chunk announces a state of %d bytes, the first one %d", total, r.total)
	case offset != got:
		return fmt.Errorf("a chunk at offset %d after %d of %d bytes", offset, got, r.total)
	case len(data) == 0 || len(data) > ChunkBytes:
		return fmt.Errorf("a chunk of %d bytes at offset %d: chunks hold 1 to %d", len(data), offset, ChunkBytes)
	case int64(len(data)) > r.total-got:
		return fmt.Errorf("a chunk of %d bytes at offset %d overruns the state of %d", len(data), offset, r.total)
	}
	r.buf = append(r.buf, data...)
	return nil
}

// complete returns the state once every byte arrived.
func (r *receiver) complete() ([]byte, error) {
	switch {
	case r.total < 0:
		return nil, errors.New("the source sent nothing")
	case int64(len(r.buf)) != r.total:
		return nil, fmt.Errorf("the transfer ended after %d of %d bytes", len(r.buf), r.total)
	}
	return r.buf, nil
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
