package coordinator

import (
	"math"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// The fuzzers of this file drive Machine with what workers can send, honest
// or not, and check its invariants (machineWatch) after every event.

// fuzzBytes reads a fuzzer's input as a stream of choices; past its end
// every choice is 0.
type fuzzBytes struct{ b []byte }

func (r *fuzzBytes) more() bool { return len(r.b) > 0 }

func (r *fuzzBytes) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzBytes) u64() uint64 {
	var v uint64
	for range 8 {
		v = v<<8 | uint64(r.byte())
	}
	return v
}

// digestAt is the digest honest workers give the state at pos.
func digestAt(pos train.Position) uint64 { return uint64(pos.Step)*0x9e3779b97f4a7c15 | 1 }

// gradAt is the digest honest workers give the reduced gradient of step.
func gradAt(step int64) uint32 { return uint32(step)*2654435761 | 1 }

// fuzzIDs are the worker ids events name: four workers, an empty id and
// one that never attaches (the server lets neither through; the machine
// must cope anyway).
var fuzzIDs = []string{"a", "b", "c", "d", "", "stranger"}

// machineFuzz drives one Machine with events read from fuzz bytes.
type machineFuzz struct {
	t   testing.TB
	w   *machineWatch
	m   *Machine
	cfg MachineConfig
	now time.Time
	r   *fuzzBytes
	inc map[string]uint64 // newest incarnation attached under each id
	// snapSent is the snapshot position each worker last sent its digest of.
	snapSent map[string]train.Position
}

func newMachineFuzz(t testing.TB, data []byte) *machineFuzz {
	r := &fuzzBytes{b: data}
	cfg := simConfig()
	cfg.Epochs = 2
	c := r.byte()
	cfg.MinWorkers = 1 + int(c%3)
	cfg.CheckpointEvery = int(c/3) % 4
	if c >= 200 {
		cfg.StopAt = 3 + int64(c%9)
	}
	spe := train.StepsPerEpoch(cfg.TrainN, cfg.Batch)
	var start train.Position
	if s := r.byte(); s >= 128 {
		// A coordinator restarted from a checkpoint.
		step := int64(s) % int64(spe*cfg.Epochs+1)
		start = train.Position{Step: step, Epoch: int(step) / spe, StepInEpoch: int(step) % spe}
	}
	m := NewMachine(cfg, start, digestAt(start), simCoordAddr)
	if r.byte()%2 == 1 {
		m.NeedScore(start.Epoch)
	}
	return &machineFuzz{t: t, w: newMachineWatch(t, m), m: m, cfg: cfg, now: time.Unix(1_700_000_000, 0), r: r, inc: map[string]uint64{}, snapSent: map[string]train.Position{}}
}

func (f *machineFuzz) clock() time.Time { return f.now }

func (f *machineFuzz) id() string { return fuzzIDs[int(f.r.byte())%len(fuzzIDs)] }

// rank is a worker's rank in the ring, or 0.
func (f *machineFuzz) rank(id string) int { return max(0, slices.Index(f.m.ring, id)) }

func (f *machineFuzz) gen() uint64 {
	g := f.m.Generation()
	switch f.r.byte() % 8 {
	case 1:
		return g - 1
	case 2:
		return g + 1
	case 3:
		return 0
	case 4:
		return f.r.u64()
	}
	return g
}

func (f *machineFuzz) step() int64 {
	s := f.m.Next().Step
	switch f.r.byte() % 8 {
	case 1:
		return s - 1
	case 2:
		return s + 1
	case 3:
		return -1
	case 4:
		return math.MaxInt64
	case 5:
		return int64(f.r.u64())
	}
	return s
}

func (f *machineFuzz) position() *nicepb.Position {
	pos := f.m.Next()
	spe := f.m.spe
	switch f.r.byte() % 8 {
	case 1:
		pos = pos.Next(spe)
	case 2:
		pos = train.Position{}
	case 3:
		pos = f.m.coordPos
	case 4:
		return &nicepb.Position{Step: int64(f.r.u64()), Epoch: int32(f.r.byte()) - 2, StepInEpoch: int32(f.r.byte()) - 2}
	case 5:
		s := int(f.r.byte()) % (spe * (f.cfg.Epochs + 1))
		pos = train.Position{Step: int64(s), Epoch: s / spe, StepInEpoch: s % spe}
	case 6:
		return nil
	}
	return statexfer.ToPB(pos)
}

// float is plausible, or one of the values a broken or hostile worker sends.
func (f *machineFuzz) float(plausible float64) float64 {
	switch f.r.byte() % 12 {
	case 1:
		return 0
	case 2:
		return math.NaN()
	case 3:
		return math.Inf(1)
	case 4:
		return math.Inf(-1)
	case 5:
		return -plausible
	case 6:
		return math.MaxFloat64
	case 7:
		return math.Float64frombits(f.r.u64())
	case 8:
		return math.Copysign(0, -1)
	}
	return plausible
}

// shard is rank's part of a set of n, or not quite.
func (f *machineFuzz) shard(n, rank, size int) (int32, int32) {
	lo, hi := train.Shard(n, rank, max(size, 1))
	switch f.r.byte() % 8 {
	case 1:
		lo++
	case 2:
		hi++
	case 3:
		lo = -1
	case 4:
		return int32(f.r.u64()), int32(f.r.u64() >> 32)
	case 5:
		lo, hi = 0, n
	}
	return int32(lo), int32(hi)
}

func (f *machineFuzz) digest(pos train.Position) uint64 {
	switch f.r.byte() % 8 {
	case 1:
		return f.r.u64()
	case 2:
		return 0
	}
	return digestAt(pos)
}

func (f *machineFuzz) batch() int {
	lo, hi := train.BatchBounds(f.cfg.TrainN, f.cfg.Batch, f.m.Next().StepInEpoch)
	return hi - lo
}

func (f *machineFuzz) send(id string, msg *nicepb.WorkerMessage) { f.w.deliver(f.clock, id, msg) }

func (f *machineFuzz) attach() {
	id := fuzzIDs[int(f.r.byte())%4]
	addr := id + ":7100"
	if f.r.byte()%8 == 1 {
		addr = fuzzIDs[int(f.r.byte())%4] + ":7100" // another worker's address
	}
	inc := f.inc[id] + 1
	switch f.r.byte() % 8 {
	case 1:
		inc = f.inc[id]
	case 2:
		inc = f.inc[id] - 1
	case 3:
		inc = 0
	case 4:
		inc = math.MaxUint64
	}
	if inc > f.inc[id] {
		f.inc[id] = inc
	}
	f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Hello{Hello: &nicepb.Hello{
		WorkerId: id, Addr: addr, Incarnation: inc, LastGeneration: f.gen()}}})
}

func (f *machineFuzz) report(id string, honest bool) *nicepb.Report {
	next := f.m.Next()
	rank, size := f.rank(id), len(f.m.ring)
	if honest {
		lo, hi := train.Shard(f.batch(), rank, size)
		return &nicepb.Report{Generation: f.m.Generation(), Step: next.Step, GradDigest: gradAt(next.Step), SumLl: -12.5 * float64(hi-lo),
			Lo: int32(lo), Hi: int32(hi), ParamsDigest: uint32(digestAt(next)), ComputeSeconds: 0.2, AllreduceSeconds: 0.01}
	}
	r := &nicepb.Report{Generation: f.gen(), Step: f.step(), GradDigest: gradAt(next.Step), ParamsDigest: uint32(digestAt(next)),
		SumLl: f.float(-50), ComputeSeconds: f.float(0.2), AllreduceSeconds: f.float(0.01), NonFinite: f.r.byte()%16 == 1}
	r.Lo, r.Hi = f.shard(f.batch(), rank, size)
	switch f.r.byte() % 8 {
	case 1:
		r.GradDigest++
	case 2:
		r.ParamsDigest++
	case 3:
		r.ParamsDigest = 0
	}
	return r
}

func (f *machineFuzz) eval(id string, honest bool) *nicepb.EvalReport {
	rank, size := f.rank(id), len(f.m.ring)
	if honest {
		lo, hi := train.Shard(f.cfg.EvalN, rank, size)
		return &nicepb.EvalReport{Generation: f.m.Generation(), Epoch: int32(f.m.evalEpoch), SumLl: -300.25 * float64(hi-lo), Lo: int32(lo), Hi: int32(hi)}
	}
	e := &nicepb.EvalReport{Generation: f.gen(), Epoch: int32(f.m.evalEpoch), SumLl: f.float(-900)}
	if f.r.byte()%8 == 1 {
		e.Epoch = int32(f.r.byte()) - 1
	}
	e.Lo, e.Hi = f.shard(f.cfg.EvalN, rank, size)
	return e
}

// honest sends what an honest member would: a Ready at next (kind 0), its
// report of the step in flight (1), its part of the epoch's score (2), or
// the digest of the snapshot the last commit asked for (3).
func (f *machineFuzz) honest(kind byte, id string) {
	var msg nicepb.WorkerMessage
	switch kind {
	case 0:
		next := f.m.Next()
		msg.Kind = &nicepb.WorkerMessage_Ready{Ready: &nicepb.Ready{Generation: f.m.Generation(), HasState: true,
			Position: statexfer.ToPB(next), StateDigest: digestAt(next)}}
	case 1:
		msg.Kind = &nicepb.WorkerMessage_Report{Report: f.report(id, true)}
	case 2:
		msg.Kind = &nicepb.WorkerMessage_Eval{Eval: f.eval(id, true)}
	default:
		pos := f.m.snapPos
		f.snapSent[id] = pos
		msg.Kind = &nicepb.WorkerMessage_Snapshotted{Snapshotted: &nicepb.Snapshotted{Generation: f.m.Generation(),
			Position: statexfer.ToPB(pos), StateDigest: digestAt(pos)}}
	}
	f.send(id, &msg)
}

// every sends, honestly, what each member owes and has not sent yet: the
// digest of the newest snapshot, its part of an awaited score, then its
// Ready or its report.
func (f *machineFuzz) every() {
	m := f.m
	member := func(id string) bool { return m.workers[id] != nil && slices.Contains(m.ring, id) }
	for _, id := range m.Ring() {
		if m.snapPos.Step > 0 && f.snapSent[id] != m.snapPos && member(id) {
			f.honest(3, id)
		}
	}
	for _, id := range m.Ring() {
		if m.evalEpoch > 0 && m.evals[id] == nil && member(id) {
			f.honest(2, id)
		}
	}
	for _, id := range m.Ring() {
		switch {
		case !member(id):
			// Dropped by an earlier message of this round.
		case m.phase == Preparing && m.workers[id].ready == nil:
			f.honest(0, id)
		case m.phase == Running && m.reports[id] == nil:
			f.honest(1, id)
		}
	}
}

var fuzzTicks = []time.Duration{0, 50 * time.Millisecond, 300 * time.Millisecond, time.Second, 2 * time.Second,
	5 * time.Second, 11 * time.Second, 3 * time.Minute}

// event reads one event and hands it to the machine.
func (f *machineFuzz) event() {
	m := f.m
	switch op := f.r.byte() % 18; op {
	case 0:
		f.attach()
	case 1:
		id := f.id()
		inc := f.inc[id]
		if f.r.byte()%4 == 1 {
			inc = f.r.u64() % 4
		}
		f.w.note("detach %s incarnation %d", id, inc)
		f.w.after(m.Detach(f.now, id, inc, "session ended"))
	case 2:
		id := f.id()
		pos := f.position()
		r := &nicepb.Ready{Generation: f.gen(), HasState: f.r.byte()%4 != 1, Position: pos}
		r.StateDigest = f.digest(statexfer.FromPB(pos))
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Ready{Ready: r}})
	case 3:
		id := f.id()
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Report{Report: f.report(id, false)}})
	case 4:
		id := f.id()
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Eval{Eval: f.eval(id, false)}})
	case 5:
		id := f.id()
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_RingFailure{RingFailure: &nicepb.RingFailure{
			Generation: f.gen(), PeerId: f.id(), Error: "stream broken"}}})
	case 6:
		id := f.id()
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Leave{Leave: &nicepb.Leave{Reason: "stopping", Position: f.position()}}})
	case 7:
		f.stored()
	case 8, 9:
		f.now = f.now.Add(fuzzTicks[f.r.byte()%byte(len(fuzzTicks))])
		f.w.note("tick %v", f.now.Format(time.StampMilli))
		f.w.after(m.Tick(f.now))
	case 10:
		f.w.note("request stop")
		m.RequestStop()
		f.w.after(Output{})
	case 11:
		f.w.note("request snapshot")
		m.RequestSnapshot()
		f.w.after(Output{})
	case 12:
		id := f.id()
		pos := f.position()
		f.send(id, &nicepb.WorkerMessage{Kind: &nicepb.WorkerMessage_Snapshotted{Snapshotted: &nicepb.Snapshotted{
			Generation: f.gen(), Position: pos, StateDigest: f.digest(statexfer.FromPB(pos))}}})
	case 13, 14, 15, 16:
		if ring := m.Ring(); len(ring) > 0 {
			f.honest(op-13, ring[int(f.r.byte())%len(ring)])
		}
	default:
		f.every()
	}
}

// stored plays the server's checkpoint writer: a snapshot the machine asked
// for, of a state the replicas agreed on (Server.awaitAgreement), was
// fetched, and, unless the write fails, stored.
func (f *machineFuzz) stored() {
	var can []Agreement
	for _, a := range f.m.View().Agreed {
		if slices.Contains(f.w.asked, a.Position) {
			can = append(can, a)
		}
	}
	if len(can) == 0 {
		return
	}
	a := can[int(f.r.byte())%len(can)]
	f.w.note("saved %+v", a)
	f.m.SetOwnState(a.Position, a.Digest)
	f.w.after(Output{})
	if f.r.byte()%4 != 1 {
		f.w.note("stored %+v", a.Position)
		f.w.after(f.m.Stored(f.now, a.Position))
	}
}

// Seeds of FuzzMachine, written with the bytes event reads: honest runs
// that the fuzzer mutates into hostile ones.
var (
	seedAttach  = func(id byte) []byte { return []byte{0, id, 0, 0, 0} }
	seedTick    = func(i byte) []byte { return []byte{8, i} }
	seedEvery   = []byte{17} // every member sends what it owes: digest, score, Ready, report
	seedEval    = func(rank byte) []byte { return []byte{15, rank} }
	seedLeave   = func(id, pos byte) []byte { return []byte{6, id, pos} }
	seedStored  = func(i byte) []byte { return []byte{7, i, 0} }
	seedFailure = func(id, peer byte) []byte { return []byte{5, id, 0, peer} }
	seedAhead   = func(id byte) []byte { return []byte{2, id, 1, 0, 0, 0} } // Ready one step past next
	seedStop    = []byte{10}
)

func script(config, start byte, parts ...[]byte) []byte {
	return slices.Concat(append([][]byte{{config, start, 0}}, parts...)...)
}

func repeat(b []byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

var machineSeeds = [][]byte{
	// Three workers train through the first epoch's end and its score.
	slices.Concat(script(0, 0, seedAttach(0), seedAttach(1), seedAttach(2), seedTick(3), seedEvery),
		slices.Concat(repeat(seedEvery, 7)...), seedEvery, seedStored(0)),
	// A member leaves mid-run; the others go on once its checkpoint is stored.
	script(3, 0, seedAttach(0), seedAttach(1), seedAttach(2), seedTick(3), seedEvery, seedEvery, seedEvery,
		seedLeave(1, 0), seedEvery, seedStored(0), seedTick(3), seedEvery, seedEvery),
	// A ring failure blamed on a member, then the grace runs out.
	script(0, 0, seedAttach(0), seedAttach(1), seedTick(3), seedEvery, seedEvery, seedFailure(0, 1),
		seedFailure(0, 1), seedTick(4), seedEvery, seedEvery),
	// A coordinator restarted from the checkpoint at step 10 finds its
	// workers one step ahead, then is asked to stop.
	script(2, 130, seedAttach(0), seedAttach(1), seedAttach(2), seedTick(3), seedAhead(0), seedAhead(1), seedAhead(2),
		seedEvery, seedStop, seedEvery, seedStored(0), seedTick(5)),
	// Stopped at the end of the first epoch: held while the epoch is scored.
	slices.Concat(script(0, 0, seedAttach(0), seedAttach(1), seedAttach(2), seedTick(3), seedEvery),
		slices.Concat(repeat(seedEvery, 6)...), seedStop, seedEvery, seedEval(0), seedEvery, seedStored(0)),
	// Held at the step limit (8), with a checkpoint every 3 steps.
	slices.Concat(script(203, 0, seedAttach(0), seedAttach(1), seedAttach(2), seedTick(3), seedEvery),
		slices.Concat(repeat(seedEvery, 9)...), seedStored(0), seedStored(1), seedAttach(3), seedTick(3), seedEvery),
}

func FuzzMachine(f *testing.F) {
	for _, s := range machineSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mf := newMachineFuzz(t, data)
		defer mf.w.catch()
		for n := 0; mf.r.more() && n < 500; n++ {
			mf.event()
		}
	})
}

// messagesCluster is a running generation of 2 or 3 honest workers after
// some steps (setup chooses), their next messages (reports, and at an
// epoch's end evaluations) waiting in their outboxes.
func messagesCluster(t testing.TB, setup byte) *simCluster {
	t.Helper()
	ids := []string{"w1", "w2", "w3"}[:2+setup%2]
	c := newSimCluster(t, simConfig(), ids...)
	c.start()
	c.runUntilNext(int64(setup/2) % 9)
	c.deliverInboxes()
	return c
}

// messageRecords encodes messages as FuzzMachineMessages reads them.
func messageRecords(t testing.TB, from []byte, msgs []*nicepb.WorkerMessage) []byte {
	var out []byte
	for i, msg := range msgs {
		b, err := proto.Marshal(msg)
		if err != nil || len(b) > 63 {
			t.Fatalf("seed message %v: %d bytes, %v", msg, len(b), err)
		}
		out = append(out, from[i], byte(len(b)))
		out = append(out, b...)
	}
	return out
}

// FuzzMachineMessages feeds protobuf WorkerMessages, decoded from the fuzz
// bytes, to a machine whose generation of 2 or 3 workers is running. The
// input is a sequence of records: a selector byte and a length byte, then
// that many bytes of a WorkerMessage from the worker the selector names
// (the last id is a stranger). A selector with the top bits 11 advances the
// clock by length × 100 ms instead; with 10 it delivers the named worker's
// own next honest message.
func FuzzMachineMessages(f *testing.F) {
	for _, setup := range []byte{0, 1, 6, 14, 15} {
		c := messagesCluster(f, setup)
		var from []byte
		var msgs []*nicepb.WorkerMessage
		for i, id := range c.ids() {
			for _, msg := range c.workers[id].outbox {
				from = append(from, byte(i))
				msgs = append(msgs, msg)
			}
		}
		f.Add(setup, messageRecords(f, from, msgs))
		// The same, each worker delivering its own.
		f.Add(setup, []byte{0x80, 0, 0x81, 0, 0x82, 0, 0x80, 0, 0x81, 0, 0x82, 0})
	}
	// At the first epoch's end (setup 15: three workers, step 7), w2 sends
	// its snapshot's digest, w3 is dropped for an evaluation outside the
	// test set, which starts generation 2, and then w1 sends its digest of
	// generation 1's snapshot: the two left of the generation that asked
	// for it agree on it.
	badEval := messageRecords(f, []byte{2}, []*nicepb.WorkerMessage{{Kind: &nicepb.WorkerMessage_Eval{
		Eval: &nicepb.EvalReport{Generation: 1, Epoch: 1, Lo: 48}}}})
	f.Add(byte(15), slices.Concat([]byte{0x81, 0}, badEval, []byte{0x80, 0}))
	f.Fuzz(func(t *testing.T, setup byte, records []byte) {
		c := messagesCluster(t, setup)
		if t.Failed() {
			t.FailNow()
		}
		w := newMachineWatch(t, c.m)
		defer w.catch()
		for _, out := range c.outs {
			if out.Snapshot != nil {
				w.asked = append(w.asked, out.Snapshot.Position)
			}
		}
		ids := append(c.ids(), "stranger")
		for n := 0; len(records) >= 2 && n < 64; n++ {
			sel, size := records[0], int(records[1])
			records = records[2:]
			body := records[:min(size, len(records))]
			records = records[len(body):]
			id := ids[int(sel&0x3f)%len(ids)]
			switch sel >> 6 {
			case 3:
				c.now = c.now.Add(time.Duration(size) * 100 * time.Millisecond)
				w.note("tick %v", c.now.Format(time.StampMilli))
				w.after(c.m.Tick(c.now))
			case 2:
				if sw := c.workers[id]; sw != nil && len(sw.outbox) > 0 {
					msg := sw.outbox[0]
					sw.outbox = sw.outbox[1:]
					w.deliver(func() time.Time { return c.now }, id, msg)
				}
			default:
				var msg nicepb.WorkerMessage
				if proto.Unmarshal(body, &msg) != nil {
					continue // gRPC ends a session whose message does not decode
				}
				w.deliver(func() time.Time { return c.now }, id, &msg)
			}
		}
	})
}
