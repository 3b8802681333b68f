package coordinator

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
)

// Validation at the edge: every number a worker sends is checked here before
// the machine lets it touch its state. A message that fails is refused with
// an error naming the sender and the field; the machine counts it
// (Refusals), and a member that sent it is dropped from the generation so
// that the step is redone without it at once rather than after a timeout.
// Nothing a worker sends can stop the run or crash the coordinator.

// ErrRefused is wrapped by every refusal of a worker's message.
var ErrRefused = errors.New("refused")

// ErrIdentityTaken refuses a session whose worker id is held by a newer
// process: two workers started with the same id would otherwise evict each
// other forever.
var ErrIdentityTaken = errors.New("worker id taken by a newer process")

// Refusals count the messages the machine refused, by reason.
type Refusals struct {
	// Stale: of an earlier generation or step. Routine after a failure
	// (the reports of an abandoned step arrive after the new plan).
	Stale int64 `json:"stale"`
	// NonMember: from a worker that is not a member of the current
	// generation.
	NonMember int64 `json:"non_member"`
	// Invalid: a field out of range (NaN, infinity, a negative or
	// impossible size or position). Its sender is dropped.
	Invalid int64 `json:"invalid"`
	// Identity: a session under the id of a newer attached process.
	Identity int64 `json:"identity"`
	// Hello: a session whose first message was not a valid Hello (counted
	// by the server, before the machine sees anything).
	Hello int64 `json:"hello"`
}

// Total is the number of refused messages.
func (r Refusals) Total() int64 { return r.Stale + r.NonMember + r.Invalid + r.Identity + r.Hello }

// fieldError is a refused field.
type fieldError struct {
	msg, field, why string
}

func (e *fieldError) Error() string { return fmt.Sprintf("field %s %s", e.field, e.why) }
func (e *fieldError) Unwrap() error { return ErrRefused }

func bad(msg, field, format string, args ...any) error {
	return &fieldError{msg: msg, field: field, why: fmt.Sprintf(format, args...)}
}

// finite checks a float field: NaN and infinities are refused.
func finite(msg, field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return bad(msg, field, "is %v, not a finite number", v)
	}
	return nil
}

// maxSeconds bounds a reported duration: a week.
const maxSeconds = 7 * 24 * 3600

func seconds(msg, field string, v float64) error {
	if err := finite(msg, field, v); err != nil {
		return err
	}
	if v < 0 || v > maxSeconds {
		return bad(msg, field, "is %g s, outside [0, %d]", v, maxSeconds)
	}
	return nil
}

// span checks a shard [lo, hi) of a set of n.
func span(msg string, lo, hi int32, n int) error {
	if lo < 0 || hi < lo || int(hi) > n {
		return bad(msg, "lo/hi", "is [%d, %d), not a range within [0, %d)", lo, hi, n)
	}
	return nil
}

// checkReport checks a report's fields; the step's batch has batch samples.
func checkReport(r *nicepb.Report, batch int) error {
	const msg = "report"
	if !r.NonFinite {
		// A non-finite report carries what it could not compute.
		if err := finite(msg, "sum_ll", r.SumLl); err != nil {
			return err
		}
	}
	if err := seconds(msg, "compute_seconds", r.ComputeSeconds); err != nil {
		return err
	}
	if err := seconds(msg, "allreduce_seconds", r.AllreduceSeconds); err != nil {
		return err
	}
	if err := seconds(msg, "commit_wait_seconds", r.CommitWaitSeconds); err != nil {
		return err
	}
	if err := seconds(msg, "update_seconds", r.UpdateSeconds); err != nil {
		return err
	}
	return span(msg, r.Lo, r.Hi, batch)
}

// checkEval checks an evaluation report of a set of n.
func checkEval(e *nicepb.EvalReport, n int) error {
	const msg = "evaluation"
	if err := finite(msg, "sum_ll", e.SumLl); err != nil {
		return err
	}
	return span(msg, e.Lo, e.Hi, n)
}

// checkPosition checks that a position a worker names can exist in this
// run: its step, epoch and step within the epoch agree.
func checkPosition(msg string, p *nicepb.Position, spe, epochs int) error {
	pos := statexfer.FromPB(p)
	switch {
	case pos.Step < 0 || pos.Epoch < 0 || pos.StepInEpoch < 0 || pos.StepInEpoch >= spe:
		return bad(msg, "position", "is step %d (epoch %d, step %d in it): negative or past the epoch's %d steps", pos.Step, pos.Epoch, pos.StepInEpoch, spe)
	case pos.Epoch > epochs || (pos.Epoch == epochs && pos.StepInEpoch > 0):
		return bad(msg, "position", "is in epoch %d of a run of %d", pos.Epoch+1, epochs)
	case pos.Step != int64(pos.Epoch)*int64(spe)+int64(pos.StepInEpoch):
		return bad(msg, "position", "is step %d, but epoch %d step %d is step %d", pos.Step, pos.Epoch, pos.StepInEpoch, int64(pos.Epoch)*int64(spe)+int64(pos.StepInEpoch))
	}
	return nil
}

// Limits of the identifying fields of a Hello.
const (
	maxIDLen   = 128
	maxAddrLen = 256
	maxTextLen = 300 // free text (a leave reason, a ring error) kept in logs
)

// CheckHello checks a session's first message: a worker id of letters,
// digits and ".-_:" (it appears in logs, status and file names), a
// host:port address, and a non-zero incarnation.
func CheckHello(h *nicepb.Hello) error {
	const msg = "hello"
	if h == nil {
		return bad(msg, "kind", "is missing: a session starts with a Hello")
	}
	if h.WorkerId == "" || len(h.WorkerId) > maxIDLen {
		return bad(msg, "worker_id", "has %d bytes; it must have 1 to %d", len(h.WorkerId), maxIDLen)
	}
	for _, c := range h.WorkerId {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_:", c)) {
			return bad(msg, "worker_id", "%q holds %q; use letters, digits and .-_:", clip(h.WorkerId), c)
		}
	}
	if err := checkAddr(msg, "addr", h.Addr); err != nil {
		return err
	}
	if h.Incarnation == 0 {
		return bad(msg, "incarnation", "is 0; a worker numbers each start of its process from 1")
	}
	return nil
}

func checkAddr(msg, field, addr string) error {
	if len(addr) == 0 || len(addr) > maxAddrLen || !utf8.ValidString(addr) {
		return bad(msg, field, "has %d bytes; it must be host:port, at most %d", len(addr), maxAddrLen)
	}
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 || i == len(addr)-1 {
		return bad(msg, field, "%q is not host:port", clip(addr))
	}
	port := 0
	for _, c := range addr[i+1:] {
		if c < '0' || c > '9' || port > 65535 {
			return bad(msg, field, "%q has no port number in 1-65535", clip(addr))
		}
		port = port*10 + int(c-'0')
	}
	if port < 1 || port > 65535 {
		return bad(msg, field, "%q has no port number in 1-65535", clip(addr))
	}
	for _, c := range addr[:i] {
		if c <= ' ' || c == 0x7f {
			return bad(msg, field, "%q holds a space or control character", clip(addr))
		}
	}
	return nil
}

// clip shortens free text from a worker for a log line, keeping it printable.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxTextLen {
		s = s[:maxTextLen] + "..."
	}
	return s
}
