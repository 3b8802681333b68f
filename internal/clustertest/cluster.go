package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/statexfer"
	"github.com/nice-flow/nice/internal/testwait"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds nice-coord and nice-worker once per test process (with the
// openblas tag when this test binary has it) and returns their folder.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "nice-bin-")
		if err != nil {
			buildErr = err
			return
		}
		args := []string{"build", "-o", binDir + "/"}
		if flow.FastBLAS() {
			args = append(args, "-tags", "openblas")
		}
		args = append(args, "./cmd/nice-coord", "./cmd/nice-worker")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the binaries: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's folder")
		}
		dir = parent
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Proc is one process of a cluster.
type Proc struct {
	Name  string
	cmd   *exec.Cmd
	done  chan struct{}
	mu    sync.Mutex
	lines []string
	seen  chan struct{} // closed and replaced at each new output line
}

// Start runs bin with args and threads Go and BLAS threads, capturing its
// output (also into logPath).
func Start(t testing.TB, name, bin, logPath string, threads int, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", threads), fmt.Sprintf("OPENBLAS_NUM_THREADS=%d", threads))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{}), seen: make(chan struct{})}
	logf, _ := os.Create(logPath)
	go func() {
		cmd.Wait()
		pw.Close()
	}()
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if logf != nil {
				fmt.Fprintln(logf, line)
			}
			p.mu.Lock()
			p.lines = append(p.lines, line)
			close(p.seen)
			p.seen = make(chan struct{})
			p.mu.Unlock()
		}
		if logf != nil {
			logf.Close()
		}
	}()
	t.Cleanup(func() { p.Kill() })
	return p
}

// WaitLine waits until the process printed a line containing substr.
func (p *Proc) WaitLine(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if strings.Contains(p.lines[i], substr) {
				l := p.lines[i]
				p.mu.Unlock()
				return l
			}
		}
		seen := p.seen
		p.mu.Unlock()
		select {
		case <-seen:
		case <-p.done:
			t.Fatalf("%s exited before printing %q; its output:\n%s", p.Name, substr, p.Output())
		case <-deadline:
			t.Fatalf("%s did not print %q within %v; its output:\n%s", p.Name, substr, timeout, p.Output())
		}
	}
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Freeze stops the process (SIGSTOP), as docker pause does: its sockets stay
// open and silent. Thaw lets it go on (SIGCONT).
func (p *Proc) Freeze() { p.cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen process.
func (p *Proc) Thaw() { p.cmd.Process.Signal(syscall.SIGCONT) }

// Stop sends SIGTERM and waits (up to timeout) for a clean exit.
func (p *Proc) Stop(timeout time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not stop within %v", p.Name, timeout)
	}
}

// Cluster is a coordinator and its workers, all processes.
type Cluster struct {
	t        testing.TB
	Bin      string
	Dir      string
	Addr     string // coordinator gRPC
	gossip   string
	CoordArg []string
	Coord    *Proc
	Workers  map[string]*Proc
	// Threads is each process's Go and BLAS thread count (default 1).
	Threads int
	// TLSDir holds the cluster's credentials, written by New; every
	// process gets --tls-dir TLSDir, and the cluster's own clients present
	// Creds.
	TLSDir string
	Creds  *creds.Bundle
	// LocalDir, if set before StartWorker, is passed as --local-dir: the
	// workers' rings run over Unix sockets there (ShortTempDir makes one).
	LocalDir string
	conn     *grpc.ClientConn
}

// ShortTempDir is a fresh folder whose path is short enough for Unix
// sockets (t.TempDir holds the test's name and can pass their 107 bytes).
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nice-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// New prepares a cluster whose coordinator runs with the training flags
// args (e.g. --hidden 16 --max-steps 6); nothing starts until
// StartCoordinator. The cluster has credentials of its own, as a deployed
// one does (mutual TLS, encrypted gossip).
func New(t testing.TB, args ...string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Bin: Binaries(t), Dir: t.TempDir(), Workers: map[string]*Proc{}, Threads: 1}
	var err error
	if c.Creds, err = creds.Generate(time.Now()); err != nil {
		t.Fatal(err)
	}
	c.TLSDir = filepath.Join(c.Dir, "creds")
	if _, err := c.Creds.Write(c.TLSDir, creds.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	c.gossip = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	c.CoordArg = append([]string{"serve", "--listen", c.Addr, "--http", "", "--gossip", c.gossip,
		"--state-dir", filepath.Join(c.Dir, "state"), "--settle", "300ms", "--samples", "0", "--tls-dir", c.TLSDir}, args...)
	conn, err := grpc.NewClient(c.Addr, c.Creds.DialOption(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
	if err != nil {
		t.Fatal(err)
	}
	c.conn = conn
	t.Cleanup(func() { conn.Close() })
	return c
}

// StartCoordinator starts (or restarts) the coordinator process and waits
// until it answers.
func (c *Cluster) StartCoordinator() {
	c.t.Helper()
	c.Coord = Start(c.t, "coordinator", filepath.Join(c.Bin, "nice-coord"), filepath.Join(c.Dir, fmt.Sprintf("coordinator-%d.log", time.Now().UnixNano())), 1, c.CoordArg...)
	c.Coord.WaitLine(c.t, "coordinator ready", 60*time.Second)
}

// StartWorker starts worker id (extra flags such as --fault may follow).
func (c *Cluster) StartWorker(id string, extra ...string) *Proc {
	c.t.Helper()
	args := append([]string{"--id", id, "--coordinator", c.Addr, "--listen", "127.0.0.1:0",
		"--join", c.gossip, "--gossip", "127.0.0.1:0", "--threads", fmt.Sprint(c.Threads), "--tls-dir", c.TLSDir,
		"--http", "127.0.0.1:0"}, extra...)
	if c.LocalDir != "" {
		args = append(args, "--local-dir", c.LocalDir)
	}
	p := Start(c.t, id, filepath.Join(c.Bin, "nice-worker"), filepath.Join(c.Dir, fmt.Sprintf("%s-%d.log", id, time.Now().UnixNano())), c.Threads, args...)
	c.Workers[id] = p
	return p
}

// Status asks the coordinator for its status.
func (c *Cluster) Status() (*coordinator.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := nicepb.NewCoordinatorClient(c.conn).Status(ctx, &nicepb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	var st coordinator.Status
	return &st, json.Unmarshal(r.Json, &st)
}

// errNotYet is a condition not met yet.
var errNotYet = errors.New("not yet")

// WaitStatus polls the status until cond holds, and returns that status.
func (c *Cluster) WaitStatus(what string, timeout time.Duration, cond func(*coordinator.Status) bool) *coordinator.Status {
	c.t.Helper()
	var last *coordinator.Status
	var lastErr error
	if testwait.Poll(timeout, what, func() error {
		last, lastErr = c.Status()
		if lastErr == nil && cond(last) {
			return nil
		}
		return errNotYet
	}) == nil {
		return last
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	c.t.Fatalf("waiting %v for %s: last status %s (err %v)\ncoordinator output:\n%s", timeout, what, b, lastErr, c.Coord.Output())
	return nil
}

// Held waits until training holds at step (the --max-steps limit) with its
// checkpoint taken, and returns the coordinator's state there.
func (c *Cluster) Held(step int64, timeout time.Duration) *train.State {
	c.t.Helper()
	return c.HeldWith(step, 0, timeout)
}

// HeldWith is Held that also waits for workers workers (0: any number) to be
// attached, every one of them training with a rank.
func (c *Cluster) HeldWith(step int64, workers int, timeout time.Duration) *train.State {
	c.t.Helper()
	what := fmt.Sprintf("training to hold at step %d", step)
	if workers > 0 {
		what += fmt.Sprintf(" with %d workers all training", workers)
	}
	st := c.WaitStatus(what, timeout, func(s *coordinator.Status) bool {
		if s.Phase != "holding" || s.Step != step || s.LastCheckpointStep != step {
			return false
		}
		if workers == 0 {
			return true
		}
		if len(s.Workers) != workers {
			return false
		}
		for _, w := range s.Workers {
			if w.State != string(coordinator.Training) || w.Rank < 0 {
				return false
			}
		}
		return true
	})
	return c.FetchState(c.Addr, &nicepb.Position{Step: st.Step, Epoch: int32(st.Epoch - 1), StepInEpoch: int32(st.StepInEpoch)})
}

// FetchState downloads the live state at pos from the process at addr (the
// coordinator serves its newest checkpoint, a worker its live state).
func (c *Cluster) FetchState(addr string, pos *nicepb.Position) *train.State {
	c.t.Helper()
	conn := c.conn
	if addr != c.Addr {
		cc, err := grpc.NewClient(addr, c.Creds.DialOption(),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*statexfer.ChunkBytes)))
		if err != nil {
			c.t.Fatal(err)
		}
		defer cc.Close()
		conn = cc
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The cluster's own processes, whatever model the test chose: bounded
	// only by the largest state a test makes.
	blob, err := statexfer.Fetch(ctx, conn, statexfer.Request{Source: addr, Position: pos, Size: statexfer.Expect{Min: 1, Max: 1 << 30}})
	if err != nil {
		c.t.Fatalf("fetching the state at step %d from %s: %v", pos.Step, addr, err)
	}
	s, err := train.DecodeState(blob)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// LedgerEntry is one line of the coordinator's ledger.
type LedgerEntry = coordinator.LedgerLine

// Ledger reads the coordinator's ledger of committed steps.
func (c *Cluster) Ledger() []LedgerEntry {
	c.t.Helper()
	f, err := os.Open(filepath.Join(c.Dir, "state", "ledger.jsonl"))
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var out []LedgerEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e LedgerEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			c.t.Fatalf("ledger line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}
