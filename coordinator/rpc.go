package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/rpcopt"
	nicepb "github.com/nice-flow/nice/proto"
)

// rpc implements the Coordinator gRPC service.
type rpc struct {
	nicepb.UnimplementedCoordinatorServer
	s       *Server
	listing atomic.Bool // a Checkpoints call runs
}

// Session attaches a worker; see the service's documentation. What a
// session holds is bounded: at most Config.MaxSessions run at once, the
// Hello must come within the session timeout, and a worker that sends
// nothing or takes nothing for as long is let go. Messages are sent by a
// goroutine of their own, so that a send blocked by a worker that does not
// read cannot keep this handler from ending the session.
func (r *rpc) Session(stream nicepb.Coordinator_SessionServer) error {
	s := r.s
	limit := s.cfg.MaxSessions
	if limit <= 0 {
		limit = DefaultMaxSessions
	}
	if n := s.openSessions.Add(1); n > int64(limit) {
		s.openSessions.Add(-1)
		s.log.Warn("session refused: too many open", "limit", limit)
		return status.Errorf(codes.ResourceExhausted, "the coordinator already has %d sessions open, its limit (MaxSessions): retry later, or raise the limit if the run has that many workers", limit)
	}
	defer s.openSessions.Add(-1)
	timeout := s.cfg.SessionTimeout
	if timeout <= 0 {
		timeout = rpcopt.DefaultSessionTimeout
	}
	hello, err := receiveHello(stream, timeout)
	if err != nil {
		return err
	}
	if err := CheckHello(hello); err != nil {
		s.refusedHello(err)
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := stream.Send(&nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Welcome{Welcome: &nicepb.Welcome{
		ConfigJson: s.configJSON, CoordinatorIncarnation: s.incarnation,
	}}}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	ss := &workerSession{id: hello.WorkerId, addr: hello.Addr, incarnation: hello.Incarnation, lastGen: hello.LastGeneration,
		out: make(chan *nicepb.CoordinatorMessage, 256), cancel: cancel}
	if !r.post(ctx, event{attach: ss}) {
		return ctx.Err()
	}
	defer r.post(context.Background(), event{detach: ss})

	recvErr := make(chan error, 1)
	heard := &ss.heard // unix nanoseconds of the last message received
	heard.Store(time.Now().UnixNano())
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			heard.Store(time.Now().UnixNano())
			if m.GetHeartbeat() != nil {
				continue
			}
			if !r.post(ctx, event{msg: m, from: ss}) {
				return
			}
		}
	}()
	sendErr := make(chan error, 1)
	var sending atomic.Int64 // unix nanoseconds when the send under way began (0: none)
	go func() {
		beat := time.NewTicker(rpcopt.HeartbeatInterval)
		defer beat.Stop()
		heartbeat := &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Heartbeat{Heartbeat: &nicepb.Heartbeat{}}}
		for {
			var m *nicepb.CoordinatorMessage
			select {
			case <-ctx.Done():
				return
			case m = <-ss.out:
			case <-beat.C:
				m = heartbeat
			}
			sending.Store(time.Now().UnixNano())
			err := stream.Send(m)
			sending.Store(0)
			if err != nil {
				sendErr <- err
				return
			}
		}
	}()
	check := time.NewTicker(rpcopt.HeartbeatInterval)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); status.Code(cause) != codes.Unknown {
				return cause
			}
			return status.Error(codes.Aborted, "session closed by the coordinator")
		case err := <-recvErr:
			return err
		case err := <-sendErr:
			return err
		case now := <-check.C:
			if silent := now.Sub(time.Unix(0, heard.Load())); silent > timeout {
				s.log.Warn("worker silent; ending its session", "worker", ss.id, "silent", silent.Round(time.Millisecond), "session_timeout", timeout)
				return status.Errorf(codes.DeadlineExceeded, "worker %s silent for %v", ss.id, silent.Round(time.Millisecond))
			}
			if began := sending.Load(); began != 0 && now.Sub(time.Unix(0, began)) > timeout {
				s.log.Warn("worker does not read its session; ending it", "worker", ss.id, "session_timeout", timeout)
				return status.Errorf(codes.DeadlineExceeded, "worker %s has not taken a message for %v", ss.id, timeout)
			}
		}
	}
}

// receiveHello waits at most timeout for the Hello that opens a session.
// The receive runs on its own goroutine: returning ends the call, which
// ends that receive.
func receiveHello(stream nicepb.Coordinator_SessionServer, timeout time.Duration) (*nicepb.Hello, error) {
	first := make(chan *nicepb.WorkerMessage, 1)
	failed := make(chan error, 1)
	go func() {
		m, err := stream.Recv()
		if err != nil {
			failed <- err
			return
		}
		first <- m
	}()
	wait := time.NewTimer(timeout)
	defer wait.Stop()
	select {
	case err := <-failed:
		return nil, err
	case <-wait.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "a session starts with a Hello within %v; none came", timeout)
	case m := <-first:
		return m.GetHello(), nil // nil if it is not one: CheckHello says so
	}
}

// post hands an event to the loop unless ctx ends first or the server stops.
func (r *rpc) post(ctx context.Context, ev event) bool {
	select {
	case r.s.events <- ev:
		return true
	case <-ctx.Done():
		return false
	case <-time.After(10 * time.Second):
		r.s.log.Error("coordinator loop is not taking events")
		return false
	}
}

// Status answers with the status as JSON.
func (r *rpc) Status(ctx context.Context, _ *nicepb.StatusRequest) (*nicepb.StatusReply, error) {
	b, err := json.Marshal(r.s.Status())
	if err != nil {
		return nil, err
	}
	return &nicepb.StatusReply{Json: b}, nil
}

// CheckpointInfo is one entry of the Checkpoints answer.
type CheckpointInfo struct {
	Step        uint64    `json:"step"`
	Epoch       uint64    `json:"epoch"`
	StepInEpoch uint64    `json:"step_in_epoch"`
	Time        time.Time `json:"time"`
	Bytes       int64     `json:"bytes"`
	Verified    bool      `json:"verified"`
	Problem     string    `json:"problem,omitempty"`
}

// Checkpoints lists the stored checkpoints, verifying each. Verifying
// reads every checkpoint whole, so one listing runs at a time.
func (r *rpc) Checkpoints(ctx context.Context, _ *nicepb.CheckpointsRequest) (*nicepb.CheckpointsReply, error) {
	if !r.listing.CompareAndSwap(false, true) {
		return nil, status.Error(codes.ResourceExhausted, "another checkpoint listing is running: retry when it is done")
	}
	defer r.listing.Store(false)
	list, err := r.s.store.List(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing checkpoints: %v", err)
	}
	b, err := json.Marshal(ListingInfo(list))
	if err != nil {
		return nil, fmt.Errorf("encoding: %w", err)
	}
	return &nicepb.CheckpointsReply{Json: b}, nil
}

// ListingInfo converts a store listing for display.
func ListingInfo(list []checkpoint.Listing) []CheckpointInfo {
	out := make([]CheckpointInfo, 0, len(list))
	for _, l := range list {
		ci := CheckpointInfo{Step: l.Info.Step, Epoch: l.Info.Epoch, StepInEpoch: l.Info.StepInEpoch, Time: l.Info.Time, Bytes: l.Info.Size, Verified: l.Verified()}
		if l.Problem != nil {
			ci.Problem = l.Problem.Error()
		}
		out = append(out, ci)
	}
	return out
}
