package clustertest

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/replay"
	"github.com/nice-flow/nice/mnist"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// A small model at batch 512 (118 steps an epoch): steps take milliseconds,
// so the tests exercise the protocol, not the arithmetic.
var tinyArgs = []string{"--hidden", "16", "--layers", "1", "--batch", "512", "--seed", "7"}

func tinyConfig() train.Config {
	c := train.DefaultConfig()
	c.Model = flow.Config{Dim: 784, Couplings: 4, Hidden: 16, HiddenLayers: 1, Prior: flow.Logistic}
	c.Batch = 512
	c.Seed = 7
	return c
}

func needMNIST(t *testing.T) (trainSet, testSet *mnist.Set) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real clusters; skipped with -short")
	}
	dir, err := mnist.FindDir("")
	if err != nil {
		t.Skipf("real MNIST not available: %v", err)
	}
	trainSet, testSet, err = mnist.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return trainSet, testSet
}

// reference trains k steps in this process, as `nice-coord train` does.
func reference(t *testing.T, trainSet, testSet *mnist.Set, k int) *train.State {
	t.Helper()
	c := tinyConfig()
	tr, err := train.New(c, train.SplitData(c, trainSet, testSet))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < k; i++ {
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	return tr.State()
}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
	}
	return d
}

func startCluster(t *testing.T, workers int, args ...string) *Cluster {
	t.Helper()
	return startClusterIn(t, "", workers, args...)
}

// startClusterIn is startCluster with the workers' rings over Unix sockets
// in localDir ("" for TCP).
func startClusterIn(t *testing.T, localDir string, workers int, args ...string) *Cluster {
	t.Helper()
	c := New(t, append(append([]string{}, tinyArgs...), args...)...)
	c.LocalDir = localDir
	c.StartCoordinator()
	for i := 1; i <= workers; i++ {
		c.StartWorker(fmt.Sprintf("w%d", i))
	}
	return c
}

func checkLedger(t *testing.T, c *Cluster, want int) {
	t.Helper()
	n, err := CheckLedger(c.Ledger(), mnist.TrainSize, 512, 7)
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	if n != want {
		t.Fatalf("ledger holds %d committed steps, want %d", n, want)
	}
}

// N = 1..4 workers give the single-process trajectory within float32
// summation-order tolerance; two runs with the same N are bitwise equal.
func TestDistributedEqualsSingleProcess(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	const k = 6
	ref := reference(t, trainSet, testSet, k)
	var first *train.State
	for n := 1; n <= 4; n++ {
		// --min-workers: every step is computed by all n (a generation of
		// fewer, while one is still starting, would sum in another order).
		c := startCluster(t, n, "--max-steps", fmt.Sprint(k), "--checkpoint-every", "0", "--min-workers", fmt.Sprint(n))
		got := c.Held(k, 2*time.Minute)
		if got.Position != ref.Position {
			t.Fatalf("N=%d: at %+v, the single process at %+v", n, got.Position, ref.Position)
		}
		d := maxDiff(got.Params, ref.Params)
		t.Logf("N=%d: largest parameter difference from the single process after %d steps: %.3g", n, k, d)
		if d > 1e-4 {
			t.Errorf("N=%d: parameters differ from the single process by up to %g", n, d)
		}
		checkLedger(t, c, k)
		if n == 2 {
			first = got
		}
	}
	// Again, with the ring over Unix sockets instead of TCP: the route
	// changes no bit.
	c := startClusterIn(t, ShortTempDir(t), 2, "--max-steps", fmt.Sprint(k), "--checkpoint-every", "0", "--min-workers", "2")
	again := c.Held(k, 2*time.Minute)
	if err := replay.SameFloats(first, again); err != nil {
		t.Fatalf("two runs with 2 workers differ: %v", err)
	}
	for id, p := range c.Workers {
		if n := ringConnections(t, p)["local"]; n == 0 {
			t.Errorf("worker %s opened no ring connection through its peer's socket", id)
		}
	}
}

// A worker SIGKILLed while computing its gradient, inside the ring, or after
// the reduce but before its report: the survivors commit the redone step
// within seconds; every sample is used once; the worker, restarted, rejoins
// with the replicas' exact state.
func TestWorkerKilledMidStep(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	for _, tc := range []struct{ phase, pause string }{
		{"gradient", "5s"}, {"ring", "700ms"}, {"report", "5s"},
	} {
		t.Run(tc.phase, func(t *testing.T) {
			const killStep, stop = 5, 14
			c := New(t, append(append([]string{}, tinyArgs...), "--max-steps", fmt.Sprint(stop), "--checkpoint-every", "4")...)
			// The rings run over Unix sockets, as under `up`: a killed
			// worker leaves its socket behind.
			c.LocalDir = ShortTempDir(t)
			c.StartCoordinator()
			c.StartWorker("w1")
			victim := c.StartWorker("w2", "--fault", fmt.Sprintf("%s@%d:%s", tc.phase, killStep, tc.pause))
			c.StartWorker("w3")
			victim.WaitLine(t, "fault injection: pausing", 2*time.Minute)
			killed := time.Now()
			victim.Kill()
			st := c.WaitStatus("the survivors to commit the redone step", 30*time.Second, func(s *coordinator.Status) bool {
				return s.Step > killStep && len(s.Ring) == 2
			})
			t.Logf("%s: killed at step %d; step %d committed by %v %.2fs later (redone steps %d)",
				tc.phase, killStep, st.Step, st.Ring, time.Since(killed).Seconds(), st.RedoneSteps)

			c.StartWorker("w2")
			// The restarted worker counts once it trains: a newcomer is
			// "waiting" until a generation admits it with the held state.
			held := c.HeldWith(stop, 3, 2*time.Minute)
			final, err := c.Status()
			if err != nil {
				t.Fatal(err)
			}
			if len(final.Workers) != 3 || !final.LedgerOK || !final.DigestsAgree {
				t.Fatalf("after the restart: %d workers, ledger ok %v, digests agree %v", len(final.Workers), final.LedgerOK, final.DigestsAgree)
			}
			pos := &nicepb.Position{Step: held.Position.Step, Epoch: int32(held.Position.Epoch), StepInEpoch: int32(held.Position.StepInEpoch)}
			for _, w := range final.Workers {
				if err := replay.SameFloats(c.FetchState(w.Addr, pos), held); err != nil {
					t.Fatalf("worker %s holds another state than the checkpoint: %v", w.ID, err)
				}
			}
			checkLedger(t, c, stop)
			checkReplay(t, c, trainSet, testSet, held)
			// Every ring connection took a socket (the restarted w2 may
			// not have joined a ring before the last step).
			local := 0.0
			for id, p := range c.Workers {
				routes := ringConnections(t, p)
				local += routes["local"]
				if n := routes["tcp"]; n != 0 {
					t.Errorf("worker %s opened %v ring connections over TCP with its peers' sockets in the folder", id, n)
				}
			}
			if local < 2 {
				t.Errorf("the workers opened %v ring connections through sockets, want at least 2 (w1's and w3's)", local)
			}
		})
	}
}

// ringConnections reads a worker process's counts of ring connections by
// route ("local", "tcp") from its /metrics.
func ringConnections(t *testing.T, p *Proc) map[string]float64 {
	t.Helper()
	line := p.WaitLine(t, "worker started", 10*time.Second)
	m := regexp.MustCompile(`\bhttp=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("worker %s: no http= in %q", p.Name, line)
	}
	fam := scrape(t, p.Name, m[1])["nice_worker_ring_connections_total"]
	if fam == nil {
		t.Fatalf("worker %s: no nice_worker_ring_connections_total", p.Name)
	}
	routes := map[string]float64{}
	for _, mt := range fam.GetMetric() {
		for _, l := range mt.GetLabel() {
			if l.GetName() == "route" {
				routes[l.GetValue()] = mt.GetCounter().GetValue()
			}
		}
	}
	for _, r := range []string{"local", "tcp"} {
		if _, ok := routes[r]; !ok {
			t.Fatalf("worker %s: no route=%q in nice_worker_ring_connections_total", p.Name, r)
		}
	}
	return routes
}

// A worker frozen (SIGSTOP: its connections stay open and silent, as with
// docker pause) is dropped once its heartbeats stop, within the session
// timeout; the others go on; thawed, it comes back with the replicas' state.
func TestFrozenWorkerDroppedAndBack(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	const stop = 100
	c := startCluster(t, 3, "--max-steps", fmt.Sprint(stop), "--checkpoint-every", "50")
	c.WaitStatus("3 workers training", time.Minute, func(s *coordinator.Status) bool {
		return s.Phase == "running" && len(s.Ring) == 3 && s.Step >= 3
	})
	victim := c.Workers["w2"]
	frozen := time.Now()
	victim.Freeze()
	st := c.WaitStatus("w2 dropped and training going on with 2", 30*time.Second, func(s *coordinator.Status) bool {
		return len(s.Ring) == 2 && !slices.Contains(s.Ring, "w2") && s.Phase == "running"
	})
	t.Logf("frozen w2 dropped, training with %v at step %d, %.2fs after the freeze", st.Ring, st.Step, time.Since(frozen).Seconds())
	after := st.Step
	c.WaitStatus("steps going on without w2", 30*time.Second, func(s *coordinator.Status) bool { return s.Step >= after+3 })
	victim.Thaw()
	held := c.HeldWith(stop, 3, 3*time.Minute)
	final, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	pos := &nicepb.Position{Step: held.Position.Step, Epoch: int32(held.Position.Epoch), StepInEpoch: int32(held.Position.StepInEpoch)}
	for _, w := range final.Workers {
		if err := replay.SameFloats(c.FetchState(w.Addr, pos), held); err != nil {
			t.Fatalf("worker %s holds another state than the checkpoint: %v", w.ID, err)
		}
	}
	checkLedger(t, c, stop)
	checkReplay(t, c, trainSet, testSet, held)
}

// The coordinator SIGKILLed mid-run and started again resumes from its newest
// checkpoint; the workers reattach by themselves; the result equals an
// uninterrupted run's bitwise.
func TestCoordinatorKilledResumes(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	const stop = 12
	// --min-workers 2: bitwise equality needs every step summed by two
	// ranks; without it, a restarted coordinator may train on with the
	// worker that reconnected first (exact too, but in another float order).
	args := []string{"--max-steps", fmt.Sprint(stop), "--checkpoint-every", "4", "--min-workers", "2"}
	want := startCluster(t, 2, args...).Held(stop, 2*time.Minute)

	c := startCluster(t, 2, args...)
	// Kill only once a checkpoint is on disk, whatever the machine's speed.
	c.WaitStatus("step 6 with a checkpoint stored", time.Minute, func(s *coordinator.Status) bool {
		return s.Step >= 6 && s.LastCheckpointStep >= 4
	})
	c.Coord.Kill()
	c.StartCoordinator()
	resumed := c.Coord.WaitLine(t, "resuming from checkpoint", 10*time.Second)
	t.Logf("restarted coordinator: %s", resumed)
	got := c.Held(stop, 2*time.Minute)
	for _, l := range strings.Split(c.Coord.Output(), "\n") {
		if strings.Contains(l, "going on from there") || strings.Contains(l, "fetches the state") {
			t.Logf("then: %s", l) // the workers' newer state adopted, or the checkpoint's sent
		}
	}
	if err := replay.SameFloats(got, want); err != nil {
		t.Fatalf("the resumed run differs from an uninterrupted one: %v", err)
	}
	checkLedger(t, c, stop)
	checkReplay(t, c, trainSet, testSet, got)
}

// A corrupted newest checkpoint is detected by its checksum, reported, and
// the previous one is resumed; `nice-coord checkpoints` shows it unverified.
func TestCorruptNewestCheckpointFallsBack(t *testing.T) {
	needMNIST(t)
	c := startCluster(t, 1, "--max-steps", "8", "--checkpoint-every", "4")
	c.Held(8, 2*time.Minute)
	// The worker goes too: a restarted coordinator would otherwise go on
	// from the worker's state at step 8 (see Machine.adoptNewer).
	c.Workers["w1"].Kill()
	if err := c.Coord.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(c.Dir, "state", "nice.db")
	flipChunkByte(t, db, 8)

	c.StartCoordinator()
	line := c.Coord.WaitLine(t, "checkpoint skipped", 10*time.Second)
	if !strings.Contains(line, "step 8") || !strings.Contains(line, "sha256") {
		t.Fatalf("the corrupt checkpoint is reported as: %s", line)
	}
	c.Coord.WaitLine(t, "resuming from checkpoint", 10*time.Second)
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Step != 4 {
		t.Fatalf("resumed at step %d, want the previous checkpoint's 4", st.Step)
	}
	out, err := exec.Command(filepath.Join(c.Bin, "nice-coord"), "checkpoints", "--addr", c.Addr, "--tls-dir", c.TLSDir).CombinedOutput()
	if err != nil {
		t.Fatalf("nice-coord checkpoints: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "NO: checkpoint at step 8 is corrupt") {
		t.Fatalf("nice-coord checkpoints does not flag step 8:\n%s", out)
	}
	t.Logf("nice-coord checkpoints:\n%s", out)
}

// flipChunkByte damages the first chunk of the checkpoint at step in a
// bbolt file the coordinator no longer holds open.
func flipChunkByte(t *testing.T, path string, step uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		key := []byte{0, 0, 0, 0, 0, 0, 0, byte(step)}
		cp := tx.Bucket([]byte("checkpoints")).Bucket(key)
		if cp == nil {
			return fmt.Errorf("no checkpoint at step %d", step)
		}
		chunks := cp.Bucket([]byte("chunks"))
		k, v := chunks.Cursor().First()
		damaged := append([]byte(nil), v...)
		damaged[len(damaged)/2] ^= 0x40
		return chunks.Put(k, damaged)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// `nice-coord status` against a live cluster shows the fields; against
// nothing, one line on stderr and a non-zero exit.
func TestStatusCommand(t *testing.T) {
	needMNIST(t)
	c := startCluster(t, 2, "--checkpoint-every", "3")
	c.WaitStatus("training with 2 workers and a checkpoint", time.Minute, func(s *coordinator.Status) bool {
		return s.Phase == "running" && len(s.Ring) == 2 && s.LastCheckpointStep > 0
	})
	bin := filepath.Join(c.Bin, "nice-coord")
	out, err := exec.Command(bin, "status", "--addr", c.Addr, "--tls-dir", c.TLSDir, "--json").Output()
	if err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var st map[string]any
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, out)
	}
	for _, k := range []string{"generation", "epoch", "step", "workers", "samples_per_sec", "test_ll", "last_checkpoint_step"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status --json lacks %q", k)
		}
	}
	workers, _ := st["workers"].([]any)
	if len(workers) != 2 {
		t.Fatalf("status --json lists %d workers, want 2", len(workers))
	}
	for _, w := range workers {
		w := w.(map[string]any)
		for _, k := range []string{"id", "state", "rank"} {
			if _, ok := w[k]; !ok {
				t.Errorf("worker entry lacks %q: %v", k, w)
			}
		}
	}
	human, err := exec.Command(bin, "status", "--addr", c.Addr, "--tls-dir", c.TLSDir).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"generation", "samples/s", "w1", "w2", "training", "last checkpoint"} {
		if !strings.Contains(string(human), want) {
			t.Errorf("status output lacks %q:\n%s", want, human)
		}
	}
	// With neither flag, the address and the credentials folder that serve
	// noted in its state folder.
	if out, err := exec.Command(bin, "status", "--state-dir", filepath.Join(c.Dir, "state"), "--quiet").CombinedOutput(); err != nil {
		t.Errorf("status finding the coordinator and its credentials from --state-dir: %v\n%s", err, out)
	}
	// Without credentials the cluster does not answer, and status says what
	// to pass.
	out, err = exec.Command(bin, "status", "--addr", c.Addr, "--insecure").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused (TLS/credentials)") || !strings.Contains(string(out), "requires TLS") ||
		!strings.Contains(string(out), "--tls-dir") {
		t.Errorf("status without credentials against a cluster with them: %v\n%s", err, out)
	}

	cmd := exec.Command(bin, "status", "--addr", fmt.Sprintf("127.0.0.1:%d", FreePort(t)))
	cmd.Dir = t.TempDir()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err == nil {
		t.Fatal("status against no coordinator exited 0")
	}
	if lines := strings.Count(strings.TrimSpace(stderr.String()), "\n") + 1; lines != 1 || !strings.Contains(stderr.String(), "nothing listens there") {
		t.Fatalf("status against nothing printed %d lines: %q", lines, stderr.String())
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// checkReplay recomputes the cluster's ledger in this process (shard by
// shard, summed by in-memory rings of the ledger's sizes) and requires the
// held state bit for bit: whatever failed, every committed step computed
// exactly the mathematics of its shards.
func checkReplay(t *testing.T, c *Cluster, trainSet, testSet *mnist.Set, held *train.State) {
	t.Helper()
	f, err := os.Open(filepath.Join(c.Dir, "state", "ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	steps, err := replay.ReadLedger(f)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := train.New(held.Config, train.SplitData(held.Config, trainSet, testSet))
	if err != nil {
		t.Fatal(err)
	}
	r := replay.New(tr)
	defer r.Close()
	sizes := map[int]int{}
	for _, s := range steps[:held.Position.Step] {
		if err := r.Step(t.Context(), s); err != nil {
			t.Fatal(err)
		}
		sizes[len(s.Shards)]++
	}
	if err := replay.SameFloats(tr.State(), held); err != nil {
		t.Fatalf("the run differs from its ledger replayed in one process (steps per ring size %v): %v", sizes, err)
	}
	t.Logf("the ledger replayed in one process gives the held state bit for bit (steps per ring size %v)", sizes)
}

// `nice-coord verify` replays a stopped coordinator's ledger and finds its
// checkpoints and its epoch score equal to the replay, across a worker
// killed in the ring at the first step of an epoch; with one step of the
// ledger cut otherwise than it was run, it fails naming that step.
func TestVerifyCommand(t *testing.T) {
	needMNIST(t)
	const spe = 118 // steps an epoch at batch 512
	const stop = spe + 12
	c := New(t, append(append([]string{}, tinyArgs...), "--max-steps", fmt.Sprint(stop), "--checkpoint-every", "20")...)
	c.StartCoordinator()
	c.StartWorker("w1")
	victim := c.StartWorker("w2", "--fault", fmt.Sprintf("ring@%d:700ms", spe))
	c.StartWorker("w3")
	victim.WaitLine(t, "fault injection: pausing", 2*time.Minute)
	victim.Kill()
	c.StartWorker("w2")
	c.HeldWith(stop, 3, 2*time.Minute)
	if err := c.Coord.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(c.Dir, "state")
	verify := func() (string, error) {
		out, err := exec.Command(filepath.Join(c.Bin, "nice-coord"), "verify", "--state-dir", stateDir).CombinedOutput()
		return string(out), err
	}
	out, err := verify()
	if err != nil {
		t.Fatalf("nice-coord verify: %v\n%s", err, out)
	}
	for _, want := range []string{"step 120: the checkpoint equals the replay bit for bit", "epoch 1: test log-likelihood", "verified: steps 0 to 130"} {
		if !strings.Contains(out, want) {
			t.Fatalf("nice-coord verify does not say %q:\n%s", want, out)
		}
	}
	t.Logf("nice-coord verify:\n%s", out)
	for _, from := range []string{"-1", "100000"} {
		out, err := exec.Command(filepath.Join(c.Bin, "nice-coord"), "verify", "--state-dir", stateDir, "--from", from).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--from "+from+": name a stored checkpoint's step between 0 and 130") {
			t.Fatalf("nice-coord verify --from %s: %v, want a refusal naming the range:\n%s", from, err, out)
		}
	}

	// Cut step 125 in other places: a run that had computed that would not
	// be the run its ledger describes.
	path := filepath.Join(stateDir, "ledger.jsonl")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	// Every worker said its build's numerics, and the ledger kept them.
	var said int
	for _, l := range lines {
		var e struct{ Shards []replay.Shard }
		if l == "" || json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		for _, sh := range e.Shards {
			if sh.Numerics != train.Numerics {
				t.Fatalf("a ledger shard holds numerics %d, want this build's %d: %s", sh.Numerics, train.Numerics, l)
			}
			said++
		}
	}
	if said == 0 {
		t.Fatalf("no shards in the ledger:\n%s", b)
	}
	for i, l := range lines {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil || e["step"] != 125.0 {
			continue
		}
		shards := e["shards"].([]any)
		shards[0].(map[string]any)["Hi"] = shards[0].(map[string]any)["Hi"].(float64) - 1
		shards[1].(map[string]any)["Lo"] = shards[1].(map[string]any)["Lo"].(float64) - 1
		nb, _ := json.Marshal(e)
		lines[i] = string(nb)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	// The batch's log-likelihood, summed over other shards, may still come
	// out the same float64; the reduced gradient's digest cannot.
	if err == nil || !regexp.MustCompile(`step 125: the (log-likelihoods of the batch|reduced gradients) differ from the run's`).MatchString(out) ||
		!strings.Contains(out, "it equals the replay up to the checkpoint at step 120") {
		t.Fatalf("nice-coord verify on a ledger altered at step 125: %v\n%s", err, out)
	}
	t.Logf("on a ledger altered at step 125: %s", strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))

	// Step 127 as a build that computes a step's floats otherwise would have
	// run it: verify says so before it replays anything, rather than
	// reporting the run as wrong.
	var worker string
	for i, l := range lines {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil || e["step"] != 127.0 {
			continue
		}
		sh := e["shards"].([]any)[1].(map[string]any)
		worker = sh["Worker"].(string)
		sh["Numerics"] = float64(train.Numerics + 1)
		nb, _ := json.Marshal(e)
		lines[i] = string(nb)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	want := fmt.Sprintf("step 127: worker %s computed its shard with a build of numerics %d, and this build is numerics %d", worker, train.Numerics+1, train.Numerics)
	if err == nil || !strings.Contains(out, want) || strings.Contains(out, "replaying steps") {
		t.Fatalf("nice-coord verify on a ledger with another build's step 127: %v, want it to refuse before replaying, saying %q:\n%s", err, want, out)
	}
}

// A worker SIGKILLed around an epoch's end: after the commit of the epoch's
// last step but before applying it, while scoring the epoch, and computing
// the next epoch's first step. The run, with the worker back, must still be
// its ledger replayed bit for bit, and the epoch scored once.
func TestWorkerKilledAtAnEpochsEnd(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	const spe = 118 // steps an epoch at batch 512
	const stop = spe + 6
	for _, fault := range []string{fmt.Sprintf("apply@%d:5s", spe-1), fmt.Sprintf("eval@%d:5s", spe), fmt.Sprintf("gradient@%d:5s", spe)} {
		t.Run(fault, func(t *testing.T) {
			c := New(t, append(append([]string{}, tinyArgs...), "--max-steps", fmt.Sprint(stop), "--checkpoint-every", "0")...)
			c.StartCoordinator()
			c.StartWorker("w1")
			victim := c.StartWorker("w2", "--fault", fault)
			c.StartWorker("w3")
			victim.WaitLine(t, "fault injection: pausing", 2*time.Minute)
			victim.Kill()
			c.StartWorker("w2")
			held := c.HeldWith(stop, 3, 2*time.Minute)
			st, err := c.Status()
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Scores) != 1 || st.Scores[0].Epoch != 1 {
				t.Fatalf("scores %+v, want epoch 1 scored once", st.Scores)
			}
			checkLedger(t, c, stop)
			checkReplay(t, c, trainSet, testSet, held)
		})
	}
}

// --gradient-wire bf16: the workers send bfloat16 around the ring; the run
// is still its ledger replayed bit for bit (the replay rounds in the same
// ring code), and it differs from the float32 run, but not by much.
func TestBFloat16GradientsReplayExactly(t *testing.T) {
	trainSet, testSet := needMNIST(t)
	const stop = 12
	args := []string{"--max-steps", fmt.Sprint(stop), "--checkpoint-every", "0", "--min-workers", "3"}
	fp32 := startCluster(t, 3, args...).Held(stop, 2*time.Minute)
	c := startCluster(t, 3, append(args, "--gradient-wire", "bf16")...)
	bf16 := c.Held(stop, 2*time.Minute)
	if bf16.Config.GradientWire != "bf16" || fp32.Config.Hash() == bf16.Config.Hash() {
		t.Fatalf("configurations: %q (hash %s) and %q (hash %s)", fp32.Config.GradientWire, fp32.Config.Hash(), bf16.Config.GradientWire, bf16.Config.Hash())
	}
	checkReplay(t, c, trainSet, testSet, bf16)
	d := maxDiff(bf16.Params, fp32.Params)
	t.Logf("after %d steps, the bf16 run's parameters differ from the fp32 run's by up to %.3g", stop, d)
	if d == 0 || d > 1e-2 {
		t.Fatalf("bf16 against fp32: largest parameter difference %g", d)
	}
}
