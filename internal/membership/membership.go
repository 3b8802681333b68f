package membership

import (
	"context"
	"errors"
	"fmt"
)

// Errors callers branch on.
var (
	// ErrMetaTooLarge means the encoded metadata exceeds MaxMetaSize.
	ErrMetaTooLarge = errors.New("node metadata too large")
	// ErrInvalidMeta means the metadata is missing a required field or
	// cannot be decoded.
	ErrInvalidMeta = errors.New("invalid node metadata")
	// ErrShutdown means the Membership has been shut down.
	ErrShutdown = errors.New("membership is shut down")
)

// Membership is one process's view of the cluster.
type Membership interface {
	// Local is this process's own member.
	Local() Member
	// Members lists the members not declared dead, the local one included,
	// sorted by name. Member.State says whether each is alive or suspect.
	Members() []Member
	// Events delivers membership changes; it is closed by Shutdown.
	Events() <-chan Event
	// Leave tells the cluster that this member is going away on purpose and
	// waits (until ctx ends) for the message to go out. Call Shutdown after.
	Leave(ctx context.Context) error
	// Shutdown stops taking part in the cluster without telling it (others
	// will detect the failure) and closes Events. It is safe to call twice.
	Shutdown() error
}

// Member is a process in the cluster.
type Member struct {
	Name string // node name, new on every process start
	Addr string // gossip address, host:port
	Meta Meta
	// State is this process's opinion of the member's liveness when Members
	// was called. Events carry StateAlive: suspicion is not an event, since
	// it either clears within seconds or ends in an EventLeave.
	State State
}

// State is a member's liveness as seen by one process's failure detector.
type State int

const (
	// StateAlive is the zero value: the member answers, or nothing says
	// otherwise yet.
	StateAlive State = iota
	// StateSuspect means this process's latest probe of the member went
	// unanswered. The member has until the suspicion timeout (see Config)
	// to show it is alive; if it does not, it is declared dead and leaves
	// with CauseFailed. A live member that was only slow goes back to
	// StateAlive at the next answered probe.
	StateSuspect
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// EventKind says what happened to a member.
type EventKind int

const (
	EventJoin   EventKind = iota + 1 // a member appeared
	EventLeave                       // a member left or was declared dead
	EventUpdate                      // a member's metadata changed
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventUpdate:
		return "update"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// LeaveCause says why a member left.
type LeaveCause int

const (
	CauseNone   LeaveCause = iota // not a leave event
	CauseLeft                     // it said goodbye (Leave)
	CauseFailed                   // failure detection declared it dead
)

func (c LeaveCause) String() string {
	switch c {
	case CauseNone:
		return "none"
	case CauseLeft:
		return "left"
	case CauseFailed:
		return "failed"
	}
	return fmt.Sprintf("cause(%d)", int(c))
}

// Event is a membership change.
type Event struct {
	Kind   EventKind
	Member Member
	Cause  LeaveCause // for EventLeave
}

func (e Event) String() string {
	if e.Kind == EventLeave {
		return fmt.Sprintf("%v %s (%v)", e.Kind, e.Member.Name, e.Cause)
	}
	return fmt.Sprintf("%v %s", e.Kind, e.Member.Name)
}
