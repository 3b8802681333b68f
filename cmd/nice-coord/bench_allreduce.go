package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/schedpolicy"
	"github.com/nice-flow/nice/ring"
)

// benchOptions are the settings of one all-reduce benchmark.
type benchOptions struct {
	Workers    int
	Floats     int
	Warmup     int
	Iters      int
	FrameBytes int
	Wire       string // "fp32" or "bf16"
	TCPBytes   int64
	CPUProfile string
	TLSDir     string // credentials the members use (mutual TLS); "" for plaintext
	LocalDir   string // the members' shared folder of Unix sockets; "" for TCP only
	Timeout    time.Duration
	Tuning     ring.GRPCTuning
	SchedBatch bool // this process, and so the members it starts, run under SCHED_BATCH
	// Member is the command line that starts one member process; the
	// default re-executes this binary in member mode.
	Member    []string
	MemberEnv []string // added to this process's environment
	// KillRank, when >= 0, is SIGKILLed KillDelay after it starts timed
	// run KillRun; the benchmark then reports how the others ended.
	KillRank  int
	KillRun   int
	KillDelay time.Duration
}

// benchResult is the benchmark's outcome; its JSON is the last line printed.
type benchResult struct {
	Workers      int       `json:"workers"`
	Floats       int       `json:"floats"`
	Bytes        int64     `json:"bytes"`
	FrameBytes   int       `json:"frame_bytes"`
	Iters        int       `json:"iters"`
	Seconds      float64   `json:"seconds"`
	MinSeconds   float64   `json:"min_seconds"`
	AlgBW        float64   `json:"algbw_GBps"`
	BusBW        float64   `json:"busbw_GBps"`
	TCP          float64   `json:"tcp_GBps"`
	BusBWOverTCP float64   `json:"busbw_over_tcp"`
	RunSeconds   []float64 `json:"run_seconds"`
	// CPU cost, which unlike time does not depend on what else the
	// machine runs: CPU time of all members per byte that crossed a link
	// (N links of 2(N-1)/N * bytes each), and of raw TCP per byte.
	CPUNsPerByte    float64 `json:"cpu_ns_per_byte"`
	TCPCPUNsPerByte float64 `json:"tcp_cpu_ns_per_byte"`
	// Context switches of all members per MiB over a link (median run):
	// waking a thread costs CPU and cache, which shows on a busy machine.
	SwitchesPerMiB float64         `json:"switches_per_mib"`
	Tuning         ring.GRPCTuning `json:"grpc"`
	TLS            bool            `json:"tls"`
	// LocalLinks counts the members' connections that went through Unix
	// sockets (--local-sockets); TCPLinks those over loopback TCP.
	LocalLinks int64 `json:"local_links"`
	TCPLinks   int64 `json:"tcp_links"`
	// Wire is how the floats travel: fp32, or bf16 (half the bytes; the
	// bandwidths above still count the float32 gradient reduced).
	Wire string `json:"wire"`
	// SchedBatch says the members and the raw TCP copy ran under
	// SCHED_BATCH, as workers run.
	SchedBatch bool `json:"sched_batch"`
}

func runBenchAllReduce(ctx context.Context, args []string) error {
	fs := newFlagSet("bench allreduce", "[flags]",
		"Starts --workers member processes on loopback (this binary, re-executed), each holding --floats\n"+
			"float32s, and times their ring all-reduce over gRPC after warm-up runs. It also measures the\n"+
			"raw TCP loopback bandwidth, prints a table, and prints as its last line a JSON object with\n"+
			"workers, floats, seconds (median), algbw_GBps, busbw_GBps = algbw*2(N-1)/N (as nccl-tests) and tcp_GBps.")
	o := benchOptions{KillRank: -1}
	fs.IntVar(&o.Workers, "workers", 2, "member processes in the ring")
	fs.IntVar(&o.Floats, "floats", 19_200_000, "float32s reduced by each all-reduce (the NICE model has 19.2 M)")
	fs.IntVar(&o.Warmup, "warmup", 3, "untimed runs first")
	fs.IntVar(&o.Iters, "iters", 10, "timed runs")
	fs.IntVar(&o.FrameBytes, "frame-bytes", ring.DefaultConfig().FrameBytes, "payload of a ring frame, at most 4 MiB")
	fs.StringVar(&o.Wire, "gradient-wire", "fp32", "fp32, or bf16: the floats travel as bfloat16 (half the bytes), as with serve --gradient-wire bf16")
	var tcpMB int64
	fs.Int64Var(&tcpMB, "tcp-mb", 512, "MiB copied over loopback TCP per bandwidth run (3 runs, median)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "folder where each member writes a CPU profile of its timed runs")
	fs.StringVar(&o.TLSDir, "tls-dir", "", "credentials folder (`nice-coord init`): the members' ring runs over mutual TLS, as a cluster with credentials does")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "give up after this long")
	batch := fs.Bool("sched-batch", true, "run this process and the members under SCHED_BATCH, as workers run (nice-worker --sched-batch); the raw TCP copy runs under it too (false: the default policy)")
	local := fs.Bool("local-sockets", true, "members reach each other over Unix sockets in a private folder, as `up`'s workers do (false: loopback TCP, as between hosts)")
	o.Tuning = ring.DefaultGRPCTuning()
	windowMB := int(o.Tuning.WindowBytes >> 20)
	fs.IntVar(&windowMB, "window-mb", windowMB, "HTTP/2 stream and connection window, MiB")
	fs.IntVar(&o.Tuning.WriteBufferBytes, "write-buffer", o.Tuning.WriteBufferBytes, "gRPC write buffer, bytes")
	fs.IntVar(&o.Tuning.ReadBufferBytes, "read-buffer", o.Tuning.ReadBufferBytes, "gRPC read buffer, bytes")
	fs.BoolVar(&o.Tuning.RecycleBuffers, "recycle-buffers", o.Tuning.RecycleBuffers, "reuse gRPC receive buffers without zeroing them")
	if _, err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	o.TCPBytes = tcpMB << 20
	o.Tuning.WindowBytes = int32(windowMB) << 20
	if o.Workers < 1 || o.Floats < 0 || o.Iters < 1 || o.Warmup < 0 {
		return fmt.Errorf("bench allreduce: need --workers >= 1, --floats >= 0, --iters >= 1, --warmup >= 0")
	}
	if _, err := ring.ParseWire(o.Wire); err != nil {
		return fmt.Errorf("bench allreduce: --gradient-wire: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench allreduce: finding this binary: %w", err)
	}
	tuning, _ := json.Marshal(o.Tuning)
	o.Member = []string{exe, "bench", memberMode, string(tuning)}
	if o.TLSDir != "" {
		if _, err := creds.Load(o.TLSDir); err != nil {
			return fmt.Errorf("bench allreduce: --tls-dir: %w", err)
		}
		o.Member = append(o.Member, o.TLSDir)
	}
	if *local {
		if o.LocalDir, err = os.MkdirTemp("", "nice-bench-"); err != nil {
			return fmt.Errorf("bench allreduce: a folder for the members' sockets (or pass --local-sockets=false): %w", err)
		}
		defer os.RemoveAll(o.LocalDir)
		o.MemberEnv = append(o.MemberEnv, benchLocalEnv+"="+o.LocalDir)
	}
	if *batch {
		// The members, started from this process's threads, inherit it.
		if _, err := schedpolicy.Batch(); err != nil {
			fmt.Fprintf(os.Stderr, "bench allreduce: batch scheduling not set, the default policy stays: %v\n", err)
		} else {
			o.SchedBatch = true
		}
	}
	res, err := benchAllReduce(ctx, o, os.Stderr)
	if err != nil {
		return err
	}
	printBench(os.Stdout, o, res)
	return nil
}

// benchMember is the parent's view of one member process.
type benchMember struct {
	rank   int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan memberEvent // closed when its stdout ends
}

// errKilledAsPlanned is returned by benchAllReduce when KillRank was set and
// every surviving member reported a broken ring.
var errKilledAsPlanned = errors.New("member killed as planned")

// benchAllReduce runs the benchmark; member stderr goes to logw. With
// KillRank set it returns the survivors' outcome in a killReport error.
func benchAllReduce(ctx context.Context, o benchOptions, logw io.Writer) (*benchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	tcp, tcpCPU, err := tcpLoopbackBandwidth(ctx, o.TCPBytes, 3)
	if err != nil {
		return nil, err
	}

	members := make([]*benchMember, o.Workers)
	defer func() {
		for _, m := range members {
			if m != nil && m.cmd.Process != nil {
				m.cmd.Process.Kill()
				m.cmd.Wait()
			}
		}
	}()
	peers := make([]ring.Peer, o.Workers)
	for r := range members {
		m, addr, err := startBenchMember(ctx, o, r, logw)
		if err != nil {
			return nil, err
		}
		members[r] = m
		peers[r] = ring.Peer{ID: fmt.Sprintf("m%d", r), Addr: addr}
	}
	for r, m := range members {
		plan := benchPlan{Rank: r, Peers: peers, Floats: o.Floats, Warmup: o.Warmup, Iters: o.Iters,
			FrameBytes: o.FrameBytes, CPUProfile: o.CPUProfile, Wire: o.Wire}
		line, _ := json.Marshal(plan)
		if _, err := m.stdin.Write(append(line, '\n')); err != nil {
			return nil, fmt.Errorf("sending the plan to member %d: %w", r, err)
		}
	}

	// Collect the runs of every member; with a kill planned, kill and then
	// time how long the survivors take to report the broken ring.
	times := make([][]float64, o.Iters)  // [run][rank]
	cpus := make([][]float64, o.Iters)   // [run][rank]
	switches := make([][]int64, o.Iters) // [run][rank]
	for i := range times {
		times[i] = make([]float64, o.Workers)
		cpus[i] = make([]float64, o.Workers)
		switches[i] = make([]int64, o.Workers)
	}
	var (
		mu       sync.Mutex
		routes   [2]int64 // local, tcp
		done     int      // members that reported Done
		letGoing sync.Once
		killedAt time.Time
		failures []string
		report   = &killReport{survivors: make(map[int]survivor)}
		wg       sync.WaitGroup
	)
	// letGo closes every member's stdin, which a member that is done waits
	// for before it leaves: once all are done, or once one failed or ended
	// (then the others cannot all be done).
	letGo := func() {
		letGoing.Do(func() {
			for _, m := range members {
				if m != nil {
					m.stdin.Close()
				}
			}
		})
	}
	defer letGo()
	for r, m := range members {
		wg.Go(func() {
			defer letGo()
			for ev := range m.events {
				switch {
				case ev.Starting > 0 && r == o.KillRank && ev.Starting == o.KillRun:
					time.Sleep(o.KillDelay)
					mu.Lock()
					killedAt = time.Now()
					mu.Unlock()
					m.cmd.Process.Kill()
				case ev.Done:
					mu.Lock()
					routes[0] += ev.LocalLinks
					routes[1] += ev.TCPLinks
					done++
					if done == len(members) {
						// Every member is done: let them leave (they wait
						// for their stdin to close, see runBenchMember).
						letGo()
					}
					mu.Unlock()
				case ev.Iter > 0 && !ev.Warm:
					times[ev.Iter-o.Warmup-1][r] = ev.Seconds
					cpus[ev.Iter-o.Warmup-1][r] = ev.CPU
					switches[ev.Iter-o.Warmup-1][r] = ev.Switches
				case ev.Error != "":
					letGo()
					mu.Lock()
					after := time.Duration(-1)
					if !killedAt.IsZero() {
						after = time.Since(killedAt)
					}
					report.survivors[r] = survivor{broken: ev.Broken, after: after, err: ev.Error}
					failures = append(failures, fmt.Sprintf("member %d: %s", r, ev.Error))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if o.KillRank >= 0 {
		return nil, report
	}
	for r, m := range members {
		if err := m.cmd.Wait(); err != nil {
			return nil, fmt.Errorf("member %d failed: %w; %s", r, err, strings.Join(failures, "; "))
		}
		members[r] = nil
	}

	res := &benchResult{Workers: o.Workers, Floats: o.Floats, Bytes: 4 * int64(o.Floats), FrameBytes: o.FrameBytes, Iters: o.Iters, TCP: tcp / 1e9, Tuning: o.Tuning, TCPCPUNsPerByte: tcpCPU, TLS: o.TLSDir != "", Wire: o.Wire,
		LocalLinks: routes[0], TCPLinks: routes[1], SchedBatch: o.SchedBatch}
	var runCPU []float64
	for _, run := range cpus {
		sum := 0.0
		for _, c := range run {
			sum += c
		}
		runCPU = append(runCPU, sum)
	}
	var runSwitches []float64
	for _, run := range switches {
		sum := int64(0)
		for _, s := range run {
			sum += s
		}
		runSwitches = append(runSwitches, float64(sum))
	}
	sort.Float64s(runCPU)
	sort.Float64s(runSwitches)
	if moved := float64(res.Bytes) * 2 * float64(o.Workers-1); moved > 0 {
		res.CPUNsPerByte = runCPU[len(runCPU)/2] * 1e9 / moved
		res.SwitchesPerMiB = runSwitches[len(runSwitches)/2] * (1 << 20) / moved
	}
	for _, run := range times {
		slowest := 0.0
		for _, s := range run {
			slowest = max(slowest, s)
		}
		res.RunSeconds = append(res.RunSeconds, slowest)
	}
	sorted := append([]float64(nil), res.RunSeconds...)
	sort.Float64s(sorted)
	res.Seconds = sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		res.Seconds = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	res.MinSeconds = sorted[0]
	if res.Seconds > 0 {
		res.AlgBW = float64(res.Bytes) / res.Seconds / 1e9
		res.BusBW = res.AlgBW * 2 * float64(o.Workers-1) / float64(o.Workers)
	}
	if res.TCP > 0 {
		res.BusBWOverTCP = res.BusBW / res.TCP
	}
	return res, nil
}

// killReport is what a benchmark with a planned kill returns: how each
// member that reported an error ended.
type killReport struct {
	survivors map[int]survivor
}

type survivor struct {
	broken bool          // the error wrapped ring.ErrRingBroken
	after  time.Duration // from the kill to the report; -1 if before it
	err    string
}

func (k *killReport) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v;", errKilledAsPlanned)
	for r, s := range k.survivors {
		fmt.Fprintf(&b, " member %d (broken=%v, %v after the kill): %s;", r, s.broken, s.after.Round(time.Millisecond), s.err)
	}
	return b.String()
}

func (k *killReport) Unwrap() error { return errKilledAsPlanned }

func startBenchMember(ctx context.Context, o benchOptions, rank int, logw io.Writer) (*benchMember, string, error) {
	cmd := exec.CommandContext(ctx, o.Member[0], o.Member[1:]...)
	cmd.Env = append(os.Environ(), o.MemberEnv...)
	cmd.Stderr = logw
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting member %d: %w", rank, err)
	}
	m := &benchMember{rank: rank, cmd: cmd, stdin: stdin, events: make(chan memberEvent, 64)}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, "", fmt.Errorf("member %d ended before announcing its address: %v", rank, sc.Err())
	}
	var first memberEvent
	if err := json.Unmarshal(sc.Bytes(), &first); err != nil || first.Addr == "" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, "", fmt.Errorf("member %d: unexpected first line %q", rank, sc.Text())
	}
	go func() {
		defer close(m.events)
		for sc.Scan() {
			var ev memberEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				m.events <- ev
			}
		}
	}()
	return m, first.Addr, nil
}

func printBench(w io.Writer, o benchOptions, r *benchResult) {
	security := "plaintext"
	if r.TLS {
		security = "mutual TLS"
	}
	if r.LocalLinks > 0 {
		security += fmt.Sprintf(", %d of %d links over Unix sockets", r.LocalLinks, r.LocalLinks+r.TCPLinks)
		if r.TLS {
			security += " (there TLS authenticates both ends and the floats cross unencrypted)"
		}
	}
	fmt.Fprintf(w, "ring all-reduce over gRPC (%s) on loopback: %d member processes, %d float32 (%.1f MB), frames of %d KiB\n",
		security, r.Workers, r.Floats, float64(r.Bytes)/1e6, r.FrameBytes>>10)
	policy := "the default scheduling policy"
	if r.SchedBatch {
		policy = "SCHED_BATCH, as workers run"
	}
	fmt.Fprintf(w, "%d timed runs after %d warm-up, under %s; a run's time is that of its slowest member\n\n", r.Iters, o.Warmup, policy)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "run\tseconds\talgbw GB/s\tbusbw GB/s\t\n")
	for i, s := range r.RunSeconds {
		alg := float64(r.Bytes) / s / 1e9
		fmt.Fprintf(tw, "%d\t%.4f\t%.3f\t%.3f\t\n", i+1, s, alg, alg*2*float64(r.Workers-1)/float64(r.Workers))
	}
	fmt.Fprintf(tw, "median\t%.4f\t%.3f\t%.3f\t\n", r.Seconds, r.AlgBW, r.BusBW)
	tw.Flush()
	fmt.Fprintf(w, "\nraw TCP loopback, one stream: %.3f GB/s\nbusbw / TCP: %.0f%%\n", r.TCP, 100*r.BusBWOverTCP)
	fmt.Fprintf(w, "CPU per byte over a link: ring %.2f ns, raw TCP %.2f ns\n", r.CPUNsPerByte, r.TCPCPUNsPerByte)
	fmt.Fprintf(w, "context switches of the ring per MiB over a link: %.1f\n\n", r.SwitchesPerMiB)
	line, _ := json.Marshal(r)
	fmt.Fprintf(w, "%s\n", line)
}
