package membership

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Static is a Membership without a network, for tests of other packages:
// the test adds, updates, suspects and removes members by hand and the
// consumer sees the same events, through the same queue, and the same
// Members, as with gossip.
type Static struct {
	queue *eventQueue

	mu       sync.Mutex
	local    Member
	members  map[string]Member
	shutdown bool
}

var _ Membership = (*Static)(nil)

// NewStatic returns a view from local with the given other members alive.
// As gossip does on joining, it emits a join event for local and each other.
func NewStatic(local Member, others ...Member) *Static {
	local.State = StateAlive
	s := &Static{queue: newEventQueue(), local: local, members: map[string]Member{}}
	for _, m := range append([]Member{local}, others...) {
		m.State = StateAlive
		s.members[m.Name] = m
		s.queue.push(Event{Kind: EventJoin, Member: m})
	}
	return s
}

// Add makes m alive: a join event, or an update if a member of that name is
// already there (which, as with gossip, also ends a suspicion).
func (s *Static) Add(m Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.State = StateAlive
	kind := EventJoin
	if _, ok := s.members[m.Name]; ok {
		kind = EventUpdate
	}
	s.members[m.Name] = m
	s.queue.push(Event{Kind: kind, Member: m})
}

// SetState sets the liveness Members reports for the named member, other
// than the local one, and reports whether it is there. As with gossip,
// suspicion is not an event: a suspect either comes back or is removed.
func (s *Static) SetState(name string, st State) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.members[name]
	if !ok || name == s.local.Name {
		return false
	}
	m.State = st
	s.members[name] = m
	return true
}

// Remove takes the named member out with the given cause (CauseLeft or
// CauseFailed) and reports whether it was alive.
func (s *Static) Remove(name string, cause LeaveCause) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.members[name]
	if !ok {
		return false
	}
	delete(s.members, name)
	s.queue.push(Event{Kind: EventLeave, Member: m, Cause: cause})
	return true
}

// Local implements Membership.
func (s *Static) Local() Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local
}

// Members implements Membership, sorted by name.
func (s *Static) Members() []Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Member, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Events implements Membership.
func (s *Static) Events() <-chan Event { return s.queue.out }

// Leave implements Membership: the local member leaves with CauseLeft.
func (s *Static) Leave(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("leaving: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return fmt.Errorf("leaving: %w", ErrShutdown)
	}
	// As with gossip, the goodbye carries the Leaving flag.
	s.local.Meta.Leaving = true
	if _, ok := s.members[s.local.Name]; ok {
		delete(s.members, s.local.Name)
		s.queue.push(Event{Kind: EventLeave, Member: s.local, Cause: CauseLeft})
	}
	return nil
}

// Shutdown implements Membership.
func (s *Static) Shutdown() error {
	s.mu.Lock()
	s.shutdown = true
	s.mu.Unlock()
	s.queue.close()
	return nil
}
