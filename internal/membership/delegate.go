package membership

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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

// memberTable is our copy of the live members. memberlist's own Members
// and LocalNode return pointers into state it keeps mutating (a data race
// for the reader), whereas its event callbacks run under its node lock, so
// the table is maintained from those.
type memberTable struct {
	self string

	mu      sync.Mutex
	members map[string]Member
	local   Member
}

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

// eventDelegate turns memberlist callbacks into table updates and queued
// Events. memberlist calls it with its node lock held, so it only copies.
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
		e.Cause = CauseFailed
		if m.Meta.Leaving {
			e.Cause = CauseLeft
		}
	}
	d.table.apply(e)
	d.queue.push(e)
}
