package clustertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/nice-flow/nice/coordinator"
	nicepb "github.com/nice-flow/nice/proto"
)

// TestSurfaceMessages knocks on every network-facing surface of a cluster
// with mutual TLS, with the cluster's own credentials, sending what a broken
// or hostile peer would: an oversized message, NaN, a wrong size, a stale
// generation, a non-member. Every cell does the hostile thing where the
// surface carries such a field and asserts that it was refused, with the
// error text; a cell where the surface has no such field says why. The
// table is logged as markdown. Afterwards the cluster must still hold at
// its step with its three workers training: nothing a prober sent stopped
// or crashed anything.
func TestSurfaceMessages(t *testing.T) {
	e := startSecureCluster(t)
	c := credentialColumns(t, e)[0] // the cluster's credentials
	cols := []string{"oversized message", "NaN", "wrong size", "stale generation", "non-member"}
	before := e.srv.Status()

	var table strings.Builder
	table.WriteString("| surface | " + strings.Join(cols, " | ") + " |\n")
	table.WriteString("|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, r := range messageSurfaces() {
		table.WriteString("| " + r.name + " |")
		for _, col := range cols {
			cell, ok := r.cells[col]
			if !ok {
				t.Errorf("%s × %s: no cell", r.name, col)
				continue
			}
			var got string
			if cell.na != "" {
				got = "n/a: " + cell.na
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				o := cell.probe(ctx, e, c)
				cancel()
				got = o.String()
				switch {
				case o.accepted:
					t.Errorf("%s × %s: %s, want refused", r.name, col, o)
				case !strings.Contains(o.text, cell.has):
					t.Errorf("%s × %s: %s; want the text to contain %q", r.name, col, o, cell.has)
				}
			}
			table.WriteString(" " + strings.ReplaceAll(got, "|", `\|`) + " |")
		}
		table.WriteString("\n")
	}
	t.Logf("network-facing surfaces × hostile messages, with the cluster's credentials:\n\n%s", table.String())

	// The refusals were counted and the newest is shown; the run holds
	// where it did, with its three workers training, its own state intact.
	st := e.waitHeld(t, len(e.workers))
	if st.Refused.Hello <= before.Refused.Hello || st.Refused.NonMember <= before.Refused.NonMember {
		t.Errorf("status refused_messages did not count the probes: before %+v, after %+v", before.Refused, st.Refused)
	}
	if !strings.Contains(st.LastRefused, "not a member") {
		t.Errorf("status last_refused = %q, want the newest refusal (a non-member's report)", st.LastRefused)
	}
	if st.Step != before.Step || st.NonFiniteSteps != before.NonFiniteSteps {
		t.Errorf("the probes moved the run: step %d → %d, non-finite steps %d → %d", before.Step, st.Step, before.NonFiniteSteps, st.NonFiniteSteps)
	}
	for i, w := range e.workers[1:] {
		if w.State().Digest() != e.workers[0].State().Digest() {
			t.Errorf("worker %d holds another state than worker 0 after the probes", i+1)
		}
	}
}

// messageCell is one cell: a probe and the text its refusal must contain,
// or why the surface carries no such field (na).
type messageCell struct {
	probe func(ctx context.Context, e *secureCluster, c column) outcome
	has   string
	na    string
}

type messageSurface struct {
	name  string
	cells map[string]messageCell
}

// several MiB: beyond every message limit of the cluster (the largest is a
// ring frame's 4 MiB + 64 KiB).
const oversized = 6 << 20

// padded returns m with an unknown field of n bytes: a message of a size
// the service never asked for, which gRPC must refuse before decoding.
func padded[M proto.Message](m M, n int) M {
	var b []byte
	b = protowire.AppendTag(b, 999, protowire.BytesType)
	b = protowire.AppendBytes(b, make([]byte, n))
	m.ProtoReflect().SetUnknown(b)
	return m
}

func messageSurfaces() []messageSurface {
	noFields := "the request has no fields"
	unaryRow := func(call func(ctx context.Context, conn *grpc.ClientConn) error) map[string]messageCell {
		return map[string]messageCell{
			"oversized message": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				conn := dial(e.t, e.srv.Addr(), c)
				defer conn.Close()
				return refusedBy(call(ctx, conn))
			}, has: "ResourceExhausted"},
			"NaN": {na: noFields}, "wrong size": {na: noFields}, "stale generation": {na: noFields},
			"non-member": {na: "read-only, open to any holder of the cluster's certificate (README: security model)"},
		}
	}
	healthRow := func(addr func(e *secureCluster) string) map[string]messageCell {
		return map[string]messageCell{
			"oversized message": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				conn := dial(e.t, addr(e), c)
				defer conn.Close()
				_, err := healthpb.NewHealthClient(conn).Check(ctx, padded(&healthpb.HealthCheckRequest{}, oversized))
				return refusedBy(err)
			}, has: "ResourceExhausted"},
			"NaN": {na: "a service name only"}, "wrong size": {na: "a service name only"}, "stale generation": {na: "no generation"},
			"non-member": {na: "read-only, open to any holder of the cluster's certificate"},
		}
	}
	fetchRow := func(addr func(e *secureCluster) string) map[string]messageCell {
		fetch := func(pos func(e *secureCluster) *nicepb.Position, pad int) func(ctx context.Context, e *secureCluster, c column) outcome {
			return func(ctx context.Context, e *secureCluster, c column) outcome {
				conn := dial(e.t, addr(e), c)
				defer conn.Close()
				stream, err := nicepb.NewStateServiceClient(conn).FetchState(ctx, padded(&nicepb.FetchStateRequest{Position: pos(e)}, pad))
				if err == nil {
					_, err = stream.Recv()
				}
				return refusedBy(err)
			}
		}
		held := func(e *secureCluster) *nicepb.Position { return e.held }
		return map[string]messageCell{
			"oversized message": {probe: fetch(held, oversized), has: "ResourceExhausted"},
			"NaN":               {na: "a position of integers"},
			// A position no run of this configuration reaches.
			"wrong size": {probe: fetch(func(*secureCluster) *nicepb.Position {
				return &nicepb.Position{Step: 1 << 40, Epoch: 1 << 30, StepInEpoch: 7}
			}, 0), has: "FailedPrecondition"},
			// The first step: the source holds only its newest states.
			"stale generation": {probe: fetch(func(*secureCluster) *nicepb.Position {
				return &nicepb.Position{Step: 1, StepInEpoch: 1}
			}, 0), has: "FailedPrecondition"},
			"non-member": {na: "served to any holder of the cluster's certificate; the transfer carries no sender"},
		}
	}
	return []messageSurface{
		{"Coordinator.Session", map[string]messageCell{
			"oversized message": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return sessionHello(ctx, e, c, &nicepb.Hello{WorkerId: strings.Repeat("x", oversized), Incarnation: 1, Addr: "127.0.0.1:1"})
			}, has: "ResourceExhausted"},
			// Membership is checked before any number is read: a
			// stranger's NaN is refused without being looked at.
			"NaN": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return sessionReport(ctx, e, c, "probe-nan", func(gen uint64) *nicepb.Report {
					return &nicepb.Report{Generation: gen, Step: e.held.Step, SumLl: math.NaN(), Hi: 1}
				})
			}, has: "not a member"},
			// A 200-byte worker id, then a member's Ready naming a
			// position past the run (the member is dropped).
			"wrong size": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				o := sessionHello(ctx, e, c, &nicepb.Hello{WorkerId: strings.Repeat("w", 200), Incarnation: 1, Addr: "127.0.0.1:1"})
				m := sessionMember(ctx, e, c, "probe-size", func(plan *nicepb.Plan) *nicepb.WorkerMessage {
					return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Ready{Ready: &nicepb.Ready{Generation: plan.Generation, HasState: true,
						Position: &nicepb.Position{Step: 1 << 40, Epoch: 1 << 30, StepInEpoch: 7}, StateDigest: 1}}}
				}, func(r coordinator.Refusals) int64 { return r.Invalid })
				return outcome{o.accepted || m.accepted, m.text + "; a Hello: " + o.text}
			}, has: "field position is"},
			// A member (planned into the generation its attaching
			// started) reporting for the generation before.
			"stale generation": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return sessionMember(ctx, e, c, "probe-stale", func(plan *nicepb.Plan) *nicepb.WorkerMessage {
					return &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: &nicepb.Report{Generation: plan.Generation - 1, Step: e.held.Step, Hi: 1}}}
				}, func(r coordinator.Refusals) int64 { return r.Stale })
			}, has: "refused, stale"},
			"non-member": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return sessionReport(ctx, e, c, "probe-stranger", func(gen uint64) *nicepb.Report {
					return &nicepb.Report{Generation: gen, Step: e.held.Step, Hi: 1}
				})
			}, has: "not a member"},
		}},
		{"Coordinator.Status", unaryRow(func(ctx context.Context, conn *grpc.ClientConn) error {
			_, err := nicepb.NewCoordinatorClient(conn).Status(ctx, padded(&nicepb.StatusRequest{}, oversized))
			return err
		})},
		{"Coordinator.Checkpoints", unaryRow(func(ctx context.Context, conn *grpc.ClientConn) error {
			_, err := nicepb.NewCoordinatorClient(conn).Checkpoints(ctx, padded(&nicepb.CheckpointsRequest{}, oversized))
			return err
		})},
		{"StateService.FetchState (coordinator)", fetchRow(func(e *secureCluster) string { return e.srv.Addr() })},
		{"StateService.FetchState (worker)", fetchRow(func(e *secureCluster) string { return e.workers[0].Addr() })},
		{"RingService.Exchange (worker)", map[string]messageCell{
			// A hello larger than the call metadata limit.
			"oversized message": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return ringStream(ctx, e, c, &nicepb.RingHello{Generation: e.srv.Status().Generation, SenderId: strings.Repeat("h", 64<<10), RingSize: 3}, nil)
			}, has: "Internal"},
			// The frames are never read: the stream is of an old
			// generation and refused at its hello. Generation 0 is older
			// than any the worker ran a collective in: a ring learns the
			// newest generation when it accepts a stream of it, and a held
			// run accepts none.
			"NaN": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				o := ringStream(ctx, e, c, ringHello(e, 0), nanFrame(0, 1024))
				o.text = "a frame of 1024 NaN floats, never read: " + o.text
				return o
			}, has: "FailedPrecondition: stale generation"},
			"wrong size": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				f := nanFrame(0, 16)
				f.Total = 1 << 40
				o := ringStream(ctx, e, c, ringHello(e, 0), f)
				o.text = "a frame of 16 floats claiming 2^40, never read: " + o.text
				return o
			}, has: "FailedPrecondition: stale generation"},
			"stale generation": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				return ringStream(ctx, e, c, ringHello(e, 0), nil)
			}, has: "stale generation"},
			// A stream from a stranger at the current generation waits to
			// be accepted; no member will take it, so it is never read and
			// is let go after the accept timeout.
			"non-member": {probe: func(ctx context.Context, e *secureCluster, c column) outcome {
				ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				h := ringHello(e, e.srv.Status().Generation)
				h.SenderId = "intruder"
				o := ringStream(ctx, e, c, h, nanFrame(h.Generation, 1024))
				// The server may end the stream at the deadline (RST_STREAM,
				// DeadlineExceeded) a moment before this side's timer fires.
				if ctx.Err() != nil || strings.HasPrefix(o.text, "DeadlineExceeded:") {
					o.text = "never accepted (no member expects sender \"intruder\"; dropped after 1 min): " + o.text
				}
				return o
			}, has: "never accepted"},
		}},
		{"Health.Check (coordinator)", healthRow(func(e *secureCluster) string { return e.srv.Addr() })},
		{"Health.Check (worker)", healthRow(func(e *secureCluster) string { return e.workers[0].Addr() })},
		{"gossip (memberlist)", map[string]messageCell{
			"oversized message": {na: "UDP packets are bounded by the datagram; memberlist's TCP reads are its own"},
			"NaN":               {na: "carries no numbers the coordinator uses"},
			"wrong size":        {na: "no sizes acted on"},
			"stale generation":  {na: "no generation"},
			"non-member":        {na: "a stranger is the credentials' columns (refused without the gossip key)"},
		}},
		{"HTTP status port", map[string]messageCell{
			"oversized message": {probe: probeHTTPHeader, has: "431"},
			"NaN":               {na: "read-only: takes no input"},
			"wrong size":        {na: "read-only: takes no input"},
			"stale generation":  {na: "read-only: takes no input"},
			"non-member":        {na: "plain HTTP, read-only by design (README: security model)"},
		}},
	}
}

// refusedBy classifies a hostile call's error: a gRPC error is the
// refusal; no error means the hostile message was taken.
func refusedBy(err error) outcome {
	if err == nil {
		return outcome{true, "the service took it"}
	}
	st := status.Convert(err)
	return outcome{false, fmt.Sprintf("%s: %s", st.Code(), st.Message())}
}

// sessionHello opens a session with hello and reads the answer.
func sessionHello(ctx context.Context, e *secureCluster, c column, hello *nicepb.Hello) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	stream, err := nicepb.NewCoordinatorClient(conn).Session(ctx)
	if err == nil {
		err = stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: hello}})
	}
	if err == nil {
		var m *nicepb.CoordinatorMessage
		if m, err = stream.Recv(); err == nil {
			return outcome{true, fmt.Sprintf("the coordinator answered %T", m.Kind)}
		}
	}
	return refusedBy(err)
}

// sessionReport attaches a probe session under id and sends the report
// made for the current generation; the verdict is the coordinator's
// last_refused once refused_messages moved.
func sessionReport(ctx context.Context, e *secureCluster, c column, id string, report func(gen uint64) *nicepb.Report) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := nicepb.NewCoordinatorClient(conn).Session(sctx)
	if err == nil {
		err = stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{
			WorkerId: id, Incarnation: 1, Addr: "127.0.0.1:1"}}})
	}
	if err == nil {
		_, err = stream.Recv() // the Welcome: attached
	}
	if err != nil {
		return outcome{false, "the probe could not attach: " + err.Error()}
	}
	before := e.srv.Status().Refused.Total()
	if err := stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: report(e.srv.Status().Generation)}}); err != nil {
		return outcome{false, "sending the report: " + err.Error()}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if st := e.srv.Status(); st.Refused.Total() > before && strings.Contains(st.LastRefused, id) {
			return outcome{false, fmt.Sprintf("refused_messages %+v; last_refused: %s", st.Refused, st.LastRefused)}
		}
		select {
		case <-ctx.Done():
			return outcome{true, "no refusal counted before the probe's deadline: " + ctx.Err().Error()}
		case <-tick.C:
		}
	}
}

// sessionMember attaches a probe session under id, waits for the Plan
// that makes it a member of the next generation, sends the message made
// for that plan, and waits until the refusal counter picked by count moves.
func sessionMember(ctx context.Context, e *secureCluster, c column, id string, msg func(*nicepb.Plan) *nicepb.WorkerMessage, count func(coordinator.Refusals) int64) outcome {
	conn := dial(e.t, e.srv.Addr(), c)
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	before := count(e.srv.Status().Refused)
	stream, err := nicepb.NewCoordinatorClient(conn).Session(sctx)
	if err == nil {
		err = stream.Send(&nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{
			WorkerId: id, Incarnation: 1, Addr: "127.0.0.1:1"}}})
	}
	var plan *nicepb.Plan
	for err == nil && plan == nil {
		var m *nicepb.CoordinatorMessage
		if m, err = stream.Recv(); err == nil {
			plan = m.GetPlan()
		}
	}
	if err != nil {
		return outcome{false, "the probe was not planned into a generation: " + err.Error()}
	}
	if err := stream.Send(msg(plan)); err != nil {
		return outcome{false, "sending: " + err.Error()}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if st := e.srv.Status(); count(st.Refused) > before {
			text := fmt.Sprintf("member of gen %d: refused, %s %d → %d", plan.Generation, refusalName(count), before, count(st.Refused))
			if strings.Contains(st.LastRefused, id) {
				text += ": " + strings.TrimPrefix(st.LastRefused, "refused ")
			}
			return outcome{false, text}
		}
		select {
		case <-ctx.Done():
			return outcome{true, "no refusal counted before the probe's deadline: " + ctx.Err().Error()}
		case <-tick.C:
		}
	}
}

// refusalName names the counter count reads.
func refusalName(count func(coordinator.Refusals) int64) string {
	switch {
	case count(coordinator.Refusals{Stale: 1}) == 1:
		return "stale"
	case count(coordinator.Refusals{Invalid: 1}) == 1:
		return "invalid"
	}
	return "refused"
}

// ringHello announces a stream of generation gen to worker 0 from its
// left-hand neighbour.
func ringHello(e *secureCluster, gen uint64) *nicepb.RingHello {
	st := e.srv.Status()
	var rank int
	for _, w := range st.Workers {
		if w.ID == "a" {
			rank = w.Rank
		}
	}
	left := ""
	for _, w := range st.Workers {
		if w.Rank == (rank+len(e.workers)-1)%len(e.workers) {
			left = w.ID
		}
	}
	return &nicepb.RingHello{Generation: gen, SenderRank: uint32((rank + len(e.workers) - 1) % len(e.workers)),
		SenderId: left, ReceiverId: "a", RingSize: uint32(len(e.workers))}
}

// nanFrame is the first frame of a collective of n floats, every one NaN.
func nanFrame(gen uint64, n int) *nicepb.RingFrame {
	data := make([]byte, 4*n)
	for i := 0; i < len(data); i += 4 {
		protowire.AppendFixed32(data[i:i], math.Float32bits(float32(math.NaN())))
	}
	return &nicepb.RingFrame{Generation: gen, Seq: 1, Total: uint64(n), Data: data}
}

// ringStream opens an Exchange stream to worker 0 announced by hello,
// sends frame if any, and reads the answer.
func ringStream(ctx context.Context, e *secureCluster, c column, hello *nicepb.RingHello, frame *nicepb.RingFrame) outcome {
	conn := dial(e.t, e.workers[0].Addr(), c)
	defer conn.Close()
	b, err := proto.Marshal(hello)
	if err != nil {
		return outcome{false, err.Error()}
	}
	sctx := metadata.AppendToOutgoingContext(ctx, "nice-ring-hello-bin", string(b))
	stream, err := nicepb.NewRingServiceClient(conn).Exchange(sctx)
	if err == nil && frame != nil {
		// A refused stream may end before the frame is sent: its answer
		// is the verdict.
		if serr := stream.Send(frame); serr != nil && !errors.Is(serr, io.EOF) {
			err = serr
		}
	}
	if err == nil {
		var ack *nicepb.RingAck
		if ack, err = stream.Recv(); err == nil {
			return outcome{true, fmt.Sprintf("the worker accepted the stream (ack %d)", ack.Seq)}
		}
	}
	return refusedBy(err)
}

// probeHTTPHeader sends a request whose headers are larger than the status
// port reads.
func probeHTTPHeader(ctx context.Context, e *secureCluster, _ column) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.srv.HTTPAddr()+"/status", nil)
	if err != nil {
		return outcome{false, err.Error()}
	}
	req.Header.Set("X-Probe", strings.Repeat("p", 2<<20))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return outcome{false, "the connection was closed: " + err.Error()}
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return outcome{true, "GET with 2 MiB of headers: 200"}
	}
	return outcome{false, fmt.Sprintf("GET with 2 MiB of headers: %s", resp.Status)}
}
