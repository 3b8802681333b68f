package membership

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// freezer is a transport that can stop a node's traffic the way a stalled
// process does: while frozen nothing goes out, and what comes in waits (as
// in a socket buffer) until it thaws.
type freezer struct {
	memberlist.NodeAwareTransport
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	stop    sync.Once
	wg      sync.WaitGroup

	mu     sync.Mutex
	thawed chan struct{} // nil when not frozen
}

func newFreezer(t memberlist.NodeAwareTransport) *freezer {
	f := &freezer{NodeAwareTransport: t, packets: make(chan *memberlist.Packet), streams: make(chan net.Conn), done: make(chan struct{})}
	f.wg.Add(2)
	go forward(f, t.PacketCh(), f.packets)
	go forward(f, t.StreamCh(), f.streams)
	return f
}

func forward[T any](f *freezer, in <-chan T, out chan<- T) {
	defer f.wg.Done()
	for {
		select {
		case v := <-in:
			f.gate()
			select {
			case out <- v:
			case <-f.done:
				return
			}
		case <-f.done:
			return
		}
	}
}

// gate blocks while the node is frozen.
func (f *freezer) gate() {
	f.mu.Lock()
	ch := f.thawed
	f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-f.done:
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thawed == nil {
		f.thawed = make(chan struct{})
	}
}

func (f *freezer) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thawed != nil {
		close(f.thawed)
		f.thawed = nil
	}
}

func (f *freezer) PacketCh() <-chan *memberlist.Packet { return f.packets }
func (f *freezer) StreamCh() <-chan net.Conn           { return f.streams }

func (f *freezer) WriteTo(b []byte, addr string) (time.Time, error) {
	f.gate()
	return f.NodeAwareTransport.WriteTo(b, addr)
}

func (f *freezer) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	f.gate()
	return f.NodeAwareTransport.WriteToAddress(b, a)
}

func (f *freezer) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	f.gate()
	return f.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (f *freezer) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	f.gate()
	return f.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

func (f *freezer) Shutdown() error {
	f.stop.Do(func() { close(f.done) })
	err := f.NodeAwareTransport.Shutdown()
	f.wg.Wait()
	return err
}

// TestStalledMemberIsSuspectedNotKilled freezes a member for 6 s, longer
// than a probe waits (ProbeInterval, 2 s) but well within what
// DefaultConfig tolerates (about 8 s): the others must list it as suspect,
// never declare it dead, and list it as alive again once it answers.
func TestStalledMemberIsSuspectedNotKilled(t *testing.T) {
	coord := startNode(t, loopbackConfig(t, "", nil))
	w1 := startNode(t, loopbackConfig(t, "1", []string{coord.Local().Addr}))
	var frozen *freezer
	cfg := loopbackConfig(t, "2", []string{coord.Local().Addr})
	cfg.wrapTransport = func(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		frozen = newFreezer(t)
		return frozen
	}
	w2 := startNode(t, cfg)
	observers := []*node{coord, w1}
	for _, n := range append(observers, w2) {
		n.waitMembers(t, 3)
	}
	name := w2.Local().Name

	frozen.freeze()
	start := time.Now()
	suspected := map[string]bool{}
	tick := time.NewTicker(20 * time.Millisecond)
	for time.Since(start) < 6*time.Second {
		for _, o := range observers {
			if o.sees(name, StateSuspect) {
				suspected[o.Local().Name] = true
			}
		}
		<-tick.C
	}
	tick.Stop()
	frozen.thaw()
	if len(suspected) == 0 {
		t.Errorf("frozen for 6 s, %s was never listed as suspect", name)
	}
	t.Logf("suspected by %v", suspected)

	for _, o := range observers {
		took := waitFor(t, 15*time.Second, o.Local().Name+" to list "+name+" alive again", func() bool {
			return o.sees(name, StateAlive)
		})
		t.Logf("%s lists %s alive %v after the thaw", o.Local().Name, name, took.Round(10*time.Millisecond))
	}
	// A suspicion started during the freeze would end in a death by
	// ProbeInterval + suspicion timeout after the freeze began; watch for
	// one until then, and a little longer.
	deadline := start.Add(2*time.Second + 6*time.Second + 2*time.Second)
	for _, o := range observers {
		o.expectNoEvent(t, deadline, "a leave of "+name, func(e Event) bool {
			return e.Kind == EventLeave && e.Member.Name == name
		})
	}
}
