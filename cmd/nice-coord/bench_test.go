package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/logbuf"
	"github.com/nice-flow/nice/ring"
)

// memberEnv makes this test binary act as a bench member process (see
// TestBenchMemberProcess) instead of running the tests.
const memberEnv = "NICE_TEST_BENCH_MEMBER"

// TestBenchMemberProcess is not a test: re-executed with memberEnv set, the
// test binary becomes one member of a benchmark ring.
func TestBenchMemberProcess(t *testing.T) {
	if os.Getenv(memberEnv) == "" {
		t.Skip("helper process for the bench tests")
	}
	err := runBenchMember(context.Background(), ring.DefaultGRPCTuning(), nil, os.Stdin, os.Stdout)
	if err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

func testBenchOptions(workers, floats int) benchOptions {
	return benchOptions{
		Workers: workers, Floats: floats, Warmup: 1, Iters: 3,
		FrameBytes: ring.DefaultConfig().FrameBytes, TCPBytes: 16 << 20,
		Timeout: time.Minute, Tuning: ring.DefaultGRPCTuning(), KillRank: -1,
		Member:    []string{os.Args[0], "-test.run=^TestBenchMemberProcess$"},
		MemberEnv: []string{memberEnv + "=1"},
	}
}

func TestBenchAllReduce(t *testing.T) {
	o := testBenchOptions(3, 100_003)
	var logs logbuf.Buffer
	res, err := benchAllReduce(context.Background(), o, &logs)
	if err != nil {
		t.Fatalf("%v; the members logged:\n%s", err, logs.String())
	}
	if l := logs.String(); l != "" {
		t.Errorf("the members logged:\n%s", l)
	}
	if res.Seconds <= 0 || res.AlgBW <= 0 || res.TCP <= 0 || len(res.RunSeconds) != o.Iters {
		t.Fatalf("implausible result %+v", res)
	}
	if want := res.AlgBW * 4 / 3; abs(res.BusBW-want) > 1e-9*want {
		t.Errorf("busbw %v, want algbw*2(N-1)/N = %v", res.BusBW, want)
	}
	var out bytes.Buffer
	printBench(&out, o, res)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last line is not JSON: %q: %v", lines[len(lines)-1], err)
	}
	for _, k := range []string{"workers", "floats", "seconds", "algbw_GBps", "busbw_GBps", "tcp_GBps"} {
		if _, ok := last[k]; !ok {
			t.Errorf("JSON line lacks %q: %s", k, lines[len(lines)-1])
		}
	}
	t.Logf("\n%s", out.String())
}

// SIGKILL one member process mid-collective: the others report a broken
// ring within 2 s and exit.
// The members leave only once all are done, so none takes along an
// acknowledgement its neighbour still waits for: a benchmark that went well
// logs no broken ring. (When each left right after a closing barrier, this
// test failed in 2 of 3 runs.)
func TestBenchLeavesNoBrokenRing(t *testing.T) {
	o := testBenchOptions(4, 2_000_000)
	for run := range 3 {
		var logs logbuf.Buffer
		if _, err := benchAllReduce(context.Background(), o, &logs); err != nil {
			t.Fatalf("run %d: %v; the members logged:\n%s", run, err, logs.String())
		}
		if l := logs.String(); l != "" {
			t.Fatalf("run %d: the members logged:\n%s", run, l)
		}
	}
}

func TestBenchKillMemberProcess(t *testing.T) {
	o := testBenchOptions(3, 8_000_000)
	o.Iters = 4
	o.KillRank, o.KillRun, o.KillDelay = 1, 2, 15*time.Millisecond
	_, err := benchAllReduce(context.Background(), o, os.Stderr)
	var rep *killReport
	if !errors.As(err, &rep) {
		t.Fatalf("got %v, want a kill report", err)
	}
	for _, r := range []int{0, 2} {
		s, ok := rep.survivors[r]
		switch {
		case !ok:
			t.Errorf("member %d reported no error", r)
		case !s.broken:
			t.Errorf("member %d: error does not wrap ErrRingBroken: %s", r, s.err)
		case s.after < 0 || s.after > 2*time.Second:
			t.Errorf("member %d reported %v after the kill: %s", r, s.after, s.err)
		default:
			t.Logf("member %d, %v after the kill: %s", r, s.after.Round(time.Millisecond), s.err)
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
