package membership

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// metaDelegate hands memberlist our encoded metadata; no user messages.
type metaDelegate struct{ meta atomic.Pointer[[]byte] }

func (d *metaDelegate) set(b []byte) { d.meta.Store(&b) }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	b := *d.meta.Load()
	if len(b) > limit { // Encode checked MaxMetaSize, which is memberlist's limit
		return nil
	}
	return b
}
func (*metaDelegate) NotifyMsg([]byte)                  {}
func (*metaDelegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (*metaDelegate) LocalState(bool) []byte            { return nil }
func (*metaDelegate) MergeRemoteState(_ []byte, _ bool) {}

// memberTable is our copy of the members not declared dead. memberlist's
// own Members and LocalNode return pointers into state it keeps mutating (a
// data race for the reader), whereas its event callbacks run under its node
// lock, so the table is maintained from those. memberlist does not expose a
// node's liveness either (Node.State is never written: its internal record
// shadows the field), so suspicion is recorded here from its prober's
// verdicts (see memberlistLog) and cleared by answered probes.
type memberTable struct {
	self string

	mu      sync.Mutex
	members map[string]Member
	local   Member
}

// apply records a join, update or leave. Joins and updates come from alive
// messages the member itself sent, so they also clear a suspicion.
func (t *memberTable) apply(e Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.Member.Name == t.self {
		t.local = e.Member
	}
	if e.Kind == EventLeave {
		delete(t.members, e.Member.Name)
	} else {
		t.members[e.Member.Name] = e.Member
	}
}

// setState records a liveness change of a known member other than this
// node, and reports whether anything changed.
func (t *memberTable) setState(name string, s State) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, ok := t.members[name]
	if !ok || name == t.self || m.State == s {
		return false
	}
	m.State = s
	t.members[name] = m
	return true
}

func (t *memberTable) list() []Member {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Member, 0, len(t.members))
	for _, m := range t.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (t *memberTable) localMember() Member {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.local
}

// suspect is called with the name of a member memberlist's prober just gave
// up on.
func (t *memberTable) suspect(log *slog.Logger, name string) {
	if t.setState(name, StateSuspect) {
		log.Debug("member suspect: a probe went unanswered", "member", name)
	}
}

// pingDelegate hears of every probe this node made that was answered in
// time: the member is alive, whatever an earlier probe concluded.
type pingDelegate struct {
	table *memberTable
	log   *slog.Logger
}

func (pingDelegate) AckPayload() []byte { return nil }

func (d pingDelegate) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	if d.table.setState(other.Name, StateAlive) {
		d.log.Debug("member alive again: a probe was answered", "member", other.Name)
	}
}

// eventDelegate turns memberlist callbacks into table updates and queued
// Events. memberlist calls it with its node lock held, so it only copies
// (and logs).
type eventDelegate struct {
	queue *eventQueue
	table *memberTable
	log   *slog.Logger
}

func (d eventDelegate) NotifyJoin(n *memberlist.Node)   { d.push(EventJoin, n) }
func (d eventDelegate) NotifyUpdate(n *memberlist.Node) { d.push(EventUpdate, n) }
func (d eventDelegate) NotifyLeave(n *memberlist.Node)  { d.push(EventLeave, n) }

func (d eventDelegate) push(kind EventKind, n *memberlist.Node) {
	m, err := toMember(n)
	if err != nil {
		d.log.Warn("ignoring member with foreign metadata", "event", kind, "err", err)
		return
	}
	e := Event{Kind: kind, Member: m}
	if kind == EventLeave {
		// n.State would tell, but memberlist never sets it (it tracks state
		// in a field of its own), so rely on the intent Leave announced.
		// Our own leave is always a goodbye: memberlist reports it only
		// after Leave, which alone does not announce Leaving.
		e.Cause = CauseFailed
		if m.Meta.Leaving || m.Name == d.table.self {
			e.Cause = CauseLeft
		}
		attrs := []any{"member", m.Name, "role", m.Meta.Role, "worker", m.Meta.WorkerID, "addr", m.Addr}
		switch {
		case m.Name == d.table.self:
			// Leave logs it.
		case e.Cause == CauseFailed:
			// The one verdict of failure detection that matters to an
			// operator; the suspicions before it are Debug.
			d.log.Warn("member declared dead: it stopped answering probes", attrs...)
		default:
			d.log.Info("member left", attrs...)
		}
	}
	d.table.apply(e)
	d.queue.push(e)
}
