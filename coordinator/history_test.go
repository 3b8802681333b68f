package coordinator

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// The step series stays within its bound however long the run, every
// committed step is counted in exactly one point, and a merged point is
// the mean of the steps it stands for.
func TestHistoryDownsamples(t *testing.T) {
	h := NewHistory(HistoryLimits{Points: 8, Events: 4, Checkpoints: 2})
	t0 := time.Unix(1_800_000_000, 0)
	const steps = 1000
	for i := 1; i <= steps; i++ {
		// NLL = step number, so a point's NLL is the mean of its steps'.
		times := []MemberTimes{{Worker: "a", Compute: 1, Allreduce: 0.5, CommitWait: 0.25, Update: 0.125}, {Worker: "b", Compute: 3, Allreduce: 0.5}}
		h.AddStep(t0.Add(time.Duration(i)*time.Second), int64(i), 100, -100*float64(i), 2, times)
		if n := len(h.View().Points); n > 8 {
			t.Fatalf("after %d steps the series holds %d points, bound 8", i, n)
		}
	}
	v := h.View()
	total, last := 0, int64(0)
	for i, p := range v.Points {
		if p.Step <= last {
			t.Fatalf("point %d is at step %d after step %d: not increasing", i, p.Step, last)
		}
		first := p.Step - int64(p.Steps) + 1
		if want := float64(first+p.Step) / 2; math.Abs(p.TrainNLL-want) > 1e-9 {
			t.Errorf("point %d (steps %d-%d) has NLL %g, want their mean %g", i, first, p.Step, p.TrainNLL, want)
		}
		if p.Compute != 2 || p.Reduce != 0.5 || p.Wait != 0.125 || p.Update != 0.0625 || p.Workers != 2 {
			t.Errorf("point %d: times %g/%g/%g/%g with %d ranks, want the members' means 2/0.5/0.125/0.0625 and 2", i, p.Compute, p.Reduce, p.Wait, p.Update, p.Workers)
		}
		if p.StepSec != 2 || p.Samples != 50 {
			t.Errorf("point %d: %g s per step, %g samples/s; want 2 and 50", i, p.StepSec, p.Samples)
		}
		total += p.Steps
		last = p.Step
	}
	if total != steps || last != steps {
		t.Fatalf("the points count %d steps up to step %d, want %d up to %d", total, last, steps, steps)
	}
	if v.Bucket < 2 || v.Bucket&(v.Bucket-1) != 0 {
		t.Fatalf("bucket %d: want a power of two above 1 after downsampling", v.Bucket)
	}
	if m := v.Members["b"]; m.Step != steps || m.Seconds != 3.5 || m.Compute != 3 {
		t.Fatalf("member b's last step: %+v, want step %d of 3.5 s with 3 s of gradient", m, steps)
	}
}

// Events come out oldest first; only the newest are kept; a repeat of the
// newest event is counted on it.
func TestHistoryEvents(t *testing.T) {
	h := NewHistory(HistoryLimits{Points: 8, Events: 5, Checkpoints: 2})
	t0 := time.Unix(1_800_000_000, 0)
	for i := range 12 {
		h.AddEvent(t0.Add(time.Duration(i)*time.Second), EventNote, fmt.Sprintf("event %d", i))
	}
	h.AddEvent(t0.Add(20*time.Second), EventNote, "event 11")
	h.AddEvent(t0.Add(21*time.Second), EventRefused, "event 11") // another kind: its own line
	ev := h.View().Events
	if len(ev) != 5 {
		t.Fatalf("%d events kept, bound 5", len(ev))
	}
	want := []string{"event 8", "event 9", "event 10", "event 11", "event 11"}
	for i, e := range ev {
		if e.Text != want[i] {
			t.Fatalf("event %d is %q, want %q (all: %+v)", i, e.Text, want[i], ev)
		}
		if i > 0 && e.Seq <= ev[i-1].Seq {
			t.Fatalf("event %d has seq %d after %d: not in order", i, e.Seq, ev[i-1].Seq)
		}
	}
	if ev[3].Count != 2 || ev[3].UnixMs != t0.Add(20*time.Second).UnixMilli() {
		t.Fatalf("the repeated event: %+v, want count 2 at its newest time", ev[3])
	}
	if ev[4].Kind != EventRefused || ev[4].Count != 1 {
		t.Fatalf("the same text of another kind: %+v, want its own event", ev[4])
	}
}

func TestHistoryCheckpointsBounded(t *testing.T) {
	h := NewHistory(HistoryLimits{Points: 8, Events: 50, Checkpoints: 3})
	now := time.Unix(1_800_000_000, 0)
	for s := int64(1); s <= 5; s++ {
		h.AddCheckpoint(now, CheckpointRecord{Step: s * 10, Outcome: "stored"}, "")
	}
	h.AddCheckpoint(now, CheckpointRecord{Step: 50, Outcome: "stored", Bytes: 7}, "stored again")
	cs := h.View().Checkpoints
	if len(cs) != 3 || cs[0].Step != 30 || cs[2].Step != 50 || cs[2].Bytes != 7 {
		t.Fatalf("checkpoints %+v, want steps 30, 40, 50 (the newest record of 50)", cs)
	}
	if ev := h.View().Events; len(ev) != 1 || ev[0].Kind != EventCheckpoint {
		t.Fatalf("events %+v, want the one checkpoint event with a text", ev)
	}
}

func TestEventKind(t *testing.T) {
	for _, c := range []struct{ log, kind string }{
		{"generation 3 (workers joined): 2 workers [a b], from step 40", EventGeneration},
		{"worker a attached from 127.0.0.1:5000", EventJoined},
		{"worker a re-attached (incarnation 9 after 8)", EventJoined},
		{"worker a left: session ended", EventLost},
		{"worker b not ready after 3m0s; dropping it", EventLost},
		{"worker b: ring of generation 2 broke (peer \"a\"): EOF", EventLost},
		{"step 12 timed out after 3m0s waiting for [b]; redoing it", EventRedone},
		{"step 12: worker a reports digests 1/2, rank 0 3/4; redoing the step", EventRedone},
		{"refused report from a: stale", EventRefused},
		{"waiting for workers: 1 attached, 2 needed", EventNote},
	} {
		if got := eventKind(c.log); got != c.kind {
			t.Errorf("%q filed as %q, want %q", c.log, got, c.kind)
		}
	}
}
