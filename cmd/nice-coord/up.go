package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/ring"
)

func init() {
	register("up", command{summary: "run a whole distributed job here: a coordinator and N worker processes on loopback", run: runUp})
}

func runUp(ctx context.Context, args []string) error { return upWith(ctx, args, nil) }

// upWith is up keeping the checkpoints in store (nil: the bbolt file in
// --state-dir).
func upWith(ctx context.Context, args []string, store checkpoint.Store) error {
	fs := newFlagSet("up", "--workers N [flags]",
		"Starts a coordinator in this process and N nice-worker processes on loopback, and trains.\n"+
			"A worker that dies is started again; Ctrl-C takes a final checkpoint and stops everything.\n"+
			"Run it again in the same folder and it resumes from --state-dir. `nice-coord status` run in\n"+
			"this folder finds it. It exits with an error when the final checkpoint cannot be stored\n"+
			"within --final-checkpoint-timeout (a full disk, say), saying which checkpoint stands.\n"+
			"Everything is on loopback, so it may run without credentials; with --tls-dir the coordinator\n"+
			"and the workers use them (mutual TLS, encrypted gossip).")
	var sf serveFlags
	addServeFlags(fs, &sf, "127.0.0.1:7000", "127.0.0.1:7080", "127.0.0.1:7946")
	n := fs.Int("workers", 2, "number of worker processes")
	workerBin := fs.String("worker-bin", "", "path of nice-worker (default: next to this nice-coord, else on PATH)")
	restart := fs.Bool("restart", true, "start a worker again when it dies")
	progress := fs.Duration("progress", 10*time.Second, "interval between progress lines")
	if f := fs.Lookup("threads"); f != nil {
		f.Usage = "BLAS threads of each worker (0: the cores shared among the workers, at least 1); with OpenBLAS a worker also gets one P (GOMAXPROCS) more while the workers' threads fit the cores, for its ring"
	}
	local := fs.Bool("local-sockets", true, "workers reach each other's rings over Unix sockets in a private folder, which costs the kernel about half of what loopback TCP does (false: loopback TCP, as between hosts)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *n < 1 {
		return fmt.Errorf("--workers %d: need at least 1", *n)
	}
	bin, err := findWorkerBin(*workerBin)
	if err != nil {
		return err
	}
	var localDir string
	if *local {
		if localDir, err = localRingDir(); err != nil {
			fmt.Fprintf(os.Stderr, "up: the workers' rings run over loopback TCP: %v\n", err)
		} else {
			defer os.RemoveAll(localDir)
		}
	}
	srv, cfg, err := sf.start(store)
	if err != nil {
		return err
	}
	// Share the cores: each worker gets its part for BLAS, and for Go one
	// more while they fit (workerProcs).
	threads := sf.tf.threads
	if threads == 0 {
		threads = max(1, runtime.NumCPU() / *n)
	}
	wctx, stopWorkers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 1; i <= *n; i++ {
		wargs := []string{
			"--id", fmt.Sprintf("w%d", i), "--coordinator", srv.Addr(), "--listen", "127.0.0.1:0",
			"--threads", strconv.Itoa(threads), "--http", "127.0.0.1:0", "--log-format", string(sf.logFormat()),
		}
		if sf.gossip != "" {
			wargs = append(wargs, "--join", cfg.Gossip.AdvertiseAddr+":"+strconv.Itoa(cfg.Gossip.BindPort), "--gossip", "127.0.0.1:0")
		}
		if sf.tf.dataDir != "" {
			wargs = append(wargs, "--data", sf.tf.dataDir)
		}
		if cfg.Creds != nil {
			wargs = append(wargs, "--tls-dir", cfg.Creds.Dir)
		}
		if localDir != "" {
			wargs = append(wargs, "--local-dir", localDir)
		}
		logPath := filepath.Join(sf.stateDir, fmt.Sprintf("worker-w%d.log", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			superviseWorker(wctx, ctx.Done(), bin, wargs, threads, workerProcs(threads, *n, flow.FastBLAS()), logPath, *restart)
		}()
	}
	security := "no credentials: plaintext on loopback"
	if cfg.Creds != nil {
		security = "mutual TLS and encrypted gossip, cluster CA " + cfg.Creds.Fingerprint()
	}
	route := "rings over loopback TCP"
	if localDir != "" {
		route = "rings over Unix sockets in " + localDir
	}
	fmt.Printf("coordinator on %s (status: nice-coord status), %d workers with %d threads each; %s; %s; logs in %s\n",
		srv.Addr(), *n, threads, security, route, sf.stateDir)
	serveDone := make(chan error, 1)
	sctx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	go func() { serveDone <- srv.Serve(sctx) }()
	tick := time.NewTicker(*progress)
	defer tick.Stop()
	var serveErr error
	var unstored time.Time // since when the run is done but its checkpoint not stored
	stopping := false
loop:
	for {
		select {
		case serveErr = <-serveDone:
			break loop
		case now := <-tick.C:
			st := srv.Status()
			eta := ""
			if st.ETASeconds > 0 {
				eta = "  ETA " + formatETA(st.ETASeconds)
			}
			fmt.Printf("epoch %d/%d  step %d  %s  %d workers  %.0f samples/s  train NLL %.2f  checkpoint at step %d%s\n",
				min(st.Epoch, st.Epochs), st.Epochs, st.Step, st.Phase, len(st.Workers), st.SamplesPerSec, st.TrainNLL, st.LastCheckpointStep, eta)
			printProblems(os.Stdout, &st)
			if stopping {
				continue
			}
			finished := st.Phase == "finished" && len(st.Scores) > 0 && st.Scores[len(st.Scores)-1].Epoch == st.Epochs
			held := st.Phase == "holding" && sf.maxSteps > 0 && st.Step >= sf.maxSteps
			stored := st.LastCheckpointStep == st.Step
			switch {
			case finished && stored:
				fmt.Printf("training complete: test log-likelihood %.2f nats, %.4f bits/dim\n", st.TestLL, st.BitsPerDim)
				stopping = true
			case held && stored:
				fmt.Printf("stopped at step %d (--max-steps); run again with a higher --max-steps or none to go on\n", st.Step)
				stopping = true
			case finished || held:
				// The coordinator asks again for the checkpoint while none
				// is stored; a disk that stays full must not keep up here
				// for ever. Serve's error then says which checkpoint stands.
				if unstored.IsZero() {
					unstored = now
				}
				if now.Sub(unstored) >= sf.finalWait {
					fmt.Printf("the checkpoint of step %d is not stored after %v: stopping\n", st.Step, sf.finalWait)
					stopping = true
				}
			}
			if stopping {
				stopServe()
			}
		}
	}
	stopWorkers()
	wg.Wait()
	return serveErr
}

func findWorkerBin(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "nice-worker")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("nice-worker"); err == nil {
		return p, nil
	}
	return "", errors.New("nice-worker not found next to nice-coord or on PATH: build both with " +
		"`go build -tags openblas -o bin/ ./cmd/...` (see README) or pass --worker-bin")
}

// workerProcs is the GOMAXPROCS of each of workers workers whose products
// run on threads BLAS threads. When the workers' threads fit the machine's
// CPUs, it is one more than threads (but no more than the CPUs), so that the
// ring's goroutines (gRPC's reader and writer, the sender, the receiver) and
// the coordinator's messages find a free P while the step's work holds the
// others: Go cannot preempt a worker's long assembly loops (Adam, the CRC),
// and with GOMAXPROCS=threads they held up its own ring. `up --workers 2` on
// 2 CPUs, alternating, seven rounds: 792-876 samples/s with one P, 836-952
// with two, ahead in six (all-reduce 64-76 ms against 54-67, commit wait 4
// against 1-2). When the workers already oversubscribe the CPUs, the spare
// P only adds contention (the garbage collector's worker, spinning threads):
// at N = 4 on 2 CPUs the gradient took 0-10 % longer with two Ps (5 % in
// the median of seven rounds) and the steps were even or slower, so there it
// stays at threads. A worker built without OpenBLAS (spare false) also stays
// at threads: gonum's products start a goroutine for each P, so a spare P
// would become one more compute thread.
func workerProcs(threads, workers int, spare bool) int {
	cpus := runtime.NumCPU()
	if !spare || threads*workers > cpus {
		return max(1, threads)
	}
	return max(1, min(threads+1, cpus))
}

// superviseWorker runs one worker process until ctx ends, starting it again
// if it dies (when restart is set and shutdown has not begun). On ctx's end
// it sends SIGTERM and, after five seconds, SIGKILL.
//
// Each worker runs in a process group of its own: a Ctrl-C in the terminal
// reaches only `up`, which first has the coordinator take its final
// checkpoint from the live workers and only then stops them. A worker whose
// parent dies gets SIGTERM, so none is left behind.
func superviseWorker(ctx context.Context, shuttingDown <-chan struct{}, bin string, args []string, threads, procs int, logPath string, restart bool) {
	for ctx.Err() == nil {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "worker log %s: %v\n", logPath, err)
			return
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs), "OPENBLAS_NUM_THREADS="+strconv.Itoa(threads))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "starting %s: %v\n", bin, err)
			logf.Close()
			return
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			logf.Close()
			select {
			case <-shuttingDown:
				return
			default:
			}
			if ctx.Err() != nil || !restart {
				return
			}
			fmt.Fprintf(os.Stderr, "worker %s exited (%v); starting it again\n", args[1], err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
			return
		}
	}
}

// localRingDir makes a private folder for the workers' ring sockets and
// checks that a socket for the longest loopback address fits in it (a long
// TMPDIR can leave too little of a socket path's 107 bytes); the error says
// why not, and the caller falls back to TCP.
func localRingDir() (string, error) {
	dir, err := os.MkdirTemp("", "nice-ring-")
	if err != nil {
		return "", fmt.Errorf("a folder for their sockets: %w", err)
	}
	lis, err := ring.ListenLocal(dir, "127.0.0.1:65535")
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	lis.Close()
	return dir, nil
}
