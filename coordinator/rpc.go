package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
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
	s *Server
}

// Session attaches a worker; see the service's documentation.
func (r *rpc) Session(stream nicepb.Coordinator_SessionServer) error {
	s := r.s
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
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
	beat := time.NewTicker(rpcopt.HeartbeatInterval)
	defer beat.Stop()
	heartbeat := &nicepb.CoordinatorMessage{Kind: &nicepb.CoordinatorMessage_Heartbeat{Heartbeat: &nicepb.Heartbeat{}}}
	timeout := s.cfg.SessionTimeout
	if timeout <= 0 {
		timeout = rpcopt.DefaultSessionTimeout
	}
	for {
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); status.Code(cause) != codes.Unknown {
				return cause
			}
			return status.Error(codes.Aborted, "session closed by the coordinator")
		case err := <-recvErr:
			return err
		case m := <-ss.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case now := <-beat.C:
			if silent := now.Sub(time.Unix(0, heard.Load())); silent > timeout {
				s.log.Warn("worker silent; ending its session", "worker", ss.id, "silent", silent.Round(time.Millisecond), "session_timeout", timeout)
				return status.Errorf(codes.DeadlineExceeded, "worker %s silent for %v", ss.id, silent.Round(time.Millisecond))
			}
			if err := stream.Send(heartbeat); err != nil {
				return err
			}
		}
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

// Checkpoints lists the stored checkpoints, verifying each.
func (r *rpc) Checkpoints(ctx context.Context, _ *nicepb.CheckpointsRequest) (*nicepb.CheckpointsReply, error) {
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
