package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/ring"
)

// benchPlan is what the benchmark sends each member on its stdin once all
// members listen.
type benchPlan struct {
	Rank       int         `json:"rank"`
	Peers      []ring.Peer `json:"peers"`
	Floats     int         `json:"floats"`
	Warmup     int         `json:"warmup"`
	Iters      int         `json:"iters"`
	FrameBytes int         `json:"frame_bytes"`
	CPUProfile string      `json:"cpuprofile,omitempty"` // folder; empty for none
	Wire       string      `json:"wire,omitempty"`       // fp32 (also when empty) or bf16
}

// benchLocalEnv names the members' shared folder of Unix sockets in their
// environment (unset: TCP only). The environment, not the plan, carries it:
// a member must serve its socket before any neighbour dials.
const benchLocalEnv = "NICE_BENCH_LOCAL_DIR"

// memberEvent is one JSON line a member writes on its stdout.
type memberEvent struct {
	Addr     string  `json:"addr,omitempty"`     // first line: where it listens
	Starting int     `json:"starting,omitempty"` // about to start timed run n (from 1)
	Iter     int     `json:"iter,omitempty"`     // run n (from 1, warm-up included) took Seconds
	Warm     bool    `json:"warm,omitempty"`
	Seconds  float64 `json:"seconds,omitempty"`
	CPU      float64 `json:"cpu,omitempty"`      // CPU seconds (user+system) the run used
	Switches int64   `json:"switches,omitempty"` // context switches (voluntary and not) during the run
	Done     bool    `json:"done,omitempty"`
	// With Done: the member's connections to its neighbour through a Unix
	// socket and over TCP (both 0 without a local folder).
	LocalLinks int64  `json:"local_links,omitempty"`
	TCPLinks   int64  `json:"tcp_links,omitempty"`
	Error      string `json:"error,omitempty"`
	Broken     bool   `json:"broken,omitempty"` // the error wraps ring.ErrRingBroken
}

// runBenchMember is one member process: it serves the ring on a loopback
// port (with mutual TLS when b is non-nil), announces the port, waits for
// the plan, runs it and reports every run on stdout.
func runBenchMember(ctx context.Context, tuning ring.GRPCTuning, b *creds.Bundle, stdin io.Reader, stdout io.Writer) error {
	enc := json.NewEncoder(stdout)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench member: listening: %w", err)
	}
	srv := grpc.NewServer(append(tuning.ServerOptions(), b.ServerOption(nil))...)
	tr := ring.NewGRPCTransport(append(tuning.DialOptions(), b.DialOption())...)
	tr.RegisterServer(srv)
	served := make(chan error, 2)
	go func() { served <- srv.Serve(lis) }()
	serving := 1
	defer func() {
		tr.Close()
		srv.Stop()
		for range serving {
			<-served
		}
	}()
	if dir := os.Getenv(benchLocalEnv); dir != "" {
		tr.SetLocalDir(dir, nil)
		ul, err := ring.ListenLocal(dir, lis.Addr().String())
		if err != nil {
			return fmt.Errorf("bench member: %w", err)
		}
		serving++
		go func() { served <- srv.Serve(ul) }()
	}
	if err := enc.Encode(memberEvent{Addr: lis.Addr().String()}); err != nil {
		return fmt.Errorf("bench member: announcing the address: %w", err)
	}

	rd := bufio.NewReader(stdin)
	line, err := rd.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("bench member: reading the plan: %w", err)
	}
	var plan benchPlan
	if err := json.Unmarshal(line, &plan); err != nil {
		return fmt.Errorf("bench member: decoding the plan: %w", err)
	}
	err = runPlan(ctx, tr, plan, enc)
	if err != nil {
		enc.Encode(memberEvent{Error: err.Error(), Broken: errors.Is(err, ring.ErrRingBroken)})
		return err
	}
	local, tcp := tr.Routes()
	if err := enc.Encode(memberEvent{Done: true, LocalLinks: local, TCPLinks: tcp}); err != nil {
		return err
	}
	// Stay in the ring until every member is done: the benchmark closes our
	// stdin then. A member's all-reduce returns once its right-hand neighbour
	// acknowledged all it sent, but its own acknowledgement to its left-hand
	// neighbour may still wait in gRPC's queue; leaving at once could take it
	// along, and that neighbour would report a broken ring after runs that
	// went well. Once every member is done, every acknowledgement arrived.
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, rd)
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
	}
	return nil
}

func runPlan(ctx context.Context, tr ring.RingTransport, plan benchPlan, enc *json.Encoder) error {
	cfg := ring.DefaultConfig()
	if plan.FrameBytes > 0 {
		cfg.FrameBytes = plan.FrameBytes
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	wire, err := ring.ParseWire(plan.Wire)
	if err != nil {
		return err
	}
	m, err := ring.NewMember(tr, cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	m.SetWire(wire)
	if err := m.Configure(1, plan.Rank, plan.Peers); err != nil {
		return err
	}
	buf := make([]float32, plan.Floats)
	barrier := make([]float32, len(plan.Peers))
	n := len(plan.Peers)
	for it := 1; it <= plan.Warmup+plan.Iters; it++ {
		warm := it <= plan.Warmup
		// Member r contributes r+1+(i%5): small integers, so the sum is
		// exact and easy to check.
		for i := range buf {
			buf[i] = float32(plan.Rank + 1 + i%5)
		}
		if err := m.AllReduce(ctx, barrier); err != nil {
			return fmt.Errorf("barrier before run %d: %w", it, err)
		}
		if it == plan.Warmup+1 && plan.CPUProfile != "" {
			stop, err := startProfile(plan.CPUProfile, plan.Rank)
			if err != nil {
				return err
			}
			defer stop()
		}
		if !warm {
			if err := enc.Encode(memberEvent{Starting: it - plan.Warmup}); err != nil {
				return err
			}
		}
		cpu0, sw0 := processUsage()
		start := time.Now()
		if err := m.AllReduce(ctx, buf); err != nil {
			return fmt.Errorf("run %d: %w", it, err)
		}
		took := time.Since(start)
		cpu1, sw1 := processUsage()
		cpu, sw := cpu1-cpu0, sw1-sw0
		if err := enc.Encode(memberEvent{Iter: it, Warm: warm, Seconds: took.Seconds(), CPU: cpu, Switches: sw}); err != nil {
			return err
		}
		ranks := float32(n * (n + 1) / 2)
		for i, v := range buf {
			if want := ranks + float32(n*(i%5)); v != want {
				return fmt.Errorf("run %d: element %d is %v, want %v", it, i, v, want)
			}
		}
	}
	return nil
}

func startProfile(dir string, rank int) (func(), error) {
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("member-%d.pprof", rank)))
	if err != nil {
		return nil, fmt.Errorf("creating the CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting the CPU profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// processUsage returns the user and system CPU time this process used so
// far and the times its threads gave up a CPU, voluntarily (to wait) or
// not (preempted).
func processUsage() (cpu float64, switches int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), ru.Nvcsw + ru.Nivcsw
}

// cpuSeconds is the user and system CPU time this process used so far.
func cpuSeconds() float64 {
	cpu, _ := processUsage()
	return cpu
}
