package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/clustertest"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/mnist"
	"github.com/nice-flow/nice/train"
)

// tinyRun is a small model on MNIST-sized images: fast to train and move.
func tinyRun() train.Config {
	c := train.DefaultConfig()
	c.Model = flow.Config{Dim: mnist.Pixels, Couplings: 2, Hidden: 8, HiddenLayers: 1, Prior: flow.Logistic}
	c.Batch = 16
	c.Epochs = 3
	c.LogEvery = 2
	return c
}

func syntheticData() train.Data {
	set := func(n int, seed uint64) *mnist.Set {
		rng := rand.New(rand.NewPCG(seed, 0))
		s := &mnist.Set{N: n, Images: make([]uint8, n*mnist.Pixels), Labels: make([]uint8, n)}
		for i := range s.Images {
			s.Images[i] = uint8(rng.IntN(256))
		}
		return s
	}
	return train.Data{Train: set(100, 1), Eval: set(20, 2), EvalName: "test"}
}

// trained returns a trainer of tinyRun on synthetic data after k steps.
func trained(t *testing.T, k int) *train.Trainer {
	t.Helper()
	tr, err := train.New(tinyRun(), syntheticData())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < k; i++ {
		if _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

func sameFloats(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func sameState(t *testing.T, what string, got, want *train.State) {
	t.Helper()
	if got.Position != want.Position || got.AdamStep != want.AdamStep {
		t.Fatalf("%s: at %+v (Adam step %d), want %+v (%d)", what, got.Position, got.AdamStep, want.Position, want.AdamStep)
	}
	if !sameFloats(got.Params, want.Params) || !sameFloats(got.M, want.M) || !sameFloats(got.V, want.V) {
		t.Fatalf("%s: the parameters or moments differ", what)
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one saying %q", parts)
	}
	t.Logf("error: %v", err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not say %q", err, p)
		}
	}
}

// serveTiny runs an in-process coordinator of tinyRun whose store holds
// the checkpoints given, with credentials b (nil: plaintext), until the
// test ends.
func serveTiny(t *testing.T, b *creds.Bundle, seed ...*train.State) *coordinator.Server {
	t.Helper()
	return serveTinyStore(t, checkpoint.NewMemory(checkpoint.MemoryOptions{}), b, seed...)
}

// serveTinyStore is serveTiny with the store given.
func serveTinyStore(t *testing.T, store checkpoint.Store, b *creds.Bundle, seed ...*train.State) *coordinator.Server {
	t.Helper()
	for _, st := range seed {
		blob, err := st.Encode()
		if err != nil {
			t.Fatal(err)
		}
		meta := checkpoint.Meta{Step: uint64(st.Position.Step), Epoch: uint64(st.Position.Epoch), StepInEpoch: uint64(st.Position.StepInEpoch), Time: time.Now(), ConfigHash: st.Config.Hash()}
		if _, err := store.Save(context.Background(), meta, blob); err != nil {
			t.Fatal(err)
		}
	}
	tc := tinyRun()
	tc.Epochs = 10 // more than the seeded runs': the coordinator serves their state with the grown count
	srv, err := coordinator.New(coordinator.Config{Train: tc, Listen: "127.0.0.1:0", StateDir: t.TempDir(), Store: store,
		Machine: coordinator.DefaultMachine(), Creds: b, FinalCheckpointTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return srv
}

func TestSourceFromAFile(t *testing.T) {
	st := trained(t, 3).State()
	dir := t.TempDir()
	statePath, modelPath := filepath.Join(dir, "state.nice"), filepath.Join(dir, "model.nice")
	if err := st.SaveFile(statePath); err != nil {
		t.Fatal(err)
	}
	l, err := (&modelSource{file: statePath, tls: &creds.Flags{}}).load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, "state file", l.saved.State, st)
	if d := l.describe(); !strings.Contains(d, "step 3 (0 epochs + 3 steps), training state from file "+statePath) {
		t.Fatalf("describe: %q", d)
	}

	// export writes the model, which loads as an export with the same
	// parameters, and refuses to overwrite it.
	ctx := context.Background()
	if err := runExport(ctx, []string{"--state", statePath, "--out", modelPath}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, runExport(ctx, []string{"--state", statePath, "--out", modelPath}), modelPath+" exists", "--force")
	l, err = (&modelSource{file: modelPath, tls: &creds.Flags{}}).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.saved.State != nil || !sameFloats(l.saved.Model.Params, st.Params) || l.saved.Model.Position != st.Position {
		t.Fatal("the export does not load as an export with the state's parameters")
	}
	if !strings.Contains(l.describe(), "exported model") {
		t.Fatalf("describe: %q", l.describe())
	}
	_, err = l.state()
	if !errors.Is(err, train.ErrExportNotResumable) {
		t.Fatalf("an export as a state to continue: %v", err)
	}
	_, err = loadResumable(ctx, modelPath, &creds.Flags{})
	wantErr(t, err, "--resume-from", modelPath, "exported model", "no optimiser state", "state.nice")

	// sample draws from both kinds the same grid.
	for _, p := range []string{statePath, modelPath} {
		out := p + ".png"
		if err := runSample(ctx, []string{"--state", p, "--n", "4", "--cols", "2", "--out", out}); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := os.ReadFile(statePath + ".png")
	b, _ := os.ReadFile(modelPath + ".png")
	if len(a) == 0 || string(a) != string(b) {
		t.Fatal("the sample grids of the state and of its export differ")
	}

	// A damaged file is refused with its name.
	blob, _ := os.ReadFile(modelPath)
	blob[len(blob)/2] ^= 0xff
	bad := filepath.Join(dir, "bad.nice")
	if err := os.WriteFile(bad, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = (&modelSource{file: bad}).load(ctx)
	if !errors.Is(err, train.ErrCorruptState) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("damaged export: %v", err)
	}
	if err := os.WriteFile(bad, blob[:len(blob)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = (&modelSource{file: bad}).load(ctx)
	if !errors.Is(err, train.ErrCorruptState) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated export: %v", err)
	}
	_, err = (&modelSource{file: filepath.Join(dir, "absent")}).load(ctx)
	wantErr(t, err, "absent does not exist (--state names")
}

func TestSourceFromAStateDir(t *testing.T) {
	ctx := context.Background()
	st := trained(t, 4).State()
	dir := t.TempDir()
	if _, err := seedStore(ctx, dir, 3, st); err != nil {
		t.Fatal(err)
	}
	l, err := (&modelSource{stateDir: dir}).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, "state folder", l.saved.State, st)
	wantErr(t, errors.New(l.describe()), "step 4", "the checkpoint at step 4 in "+filepath.Join(dir, "nice.db"))

	// A second seed is refused: the folder has its own checkpoints.
	_, err = seedStore(ctx, dir, 3, st)
	wantErr(t, err, "already holds 1 checkpoints", "step 4", "empty --state-dir")

	// While a coordinator holds the file: say so, and point to --addr.
	if err := os.WriteFile(addrFile(dir), []byte("127.0.0.1:7123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	held, err := checkpoint.OpenBolt(filepath.Join(dir, "nice.db"), checkpoint.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&modelSource{stateDir: dir}).load(ctx)
	held.Close()
	wantErr(t, err, "held by a running coordinator", "--addr 127.0.0.1:7123")

	_, err = (&modelSource{stateDir: t.TempDir()}).load(ctx)
	wantErr(t, err, "no checkpoint file", "nice.db")

	empty := t.TempDir()
	s, err := checkpoint.OpenBolt(filepath.Join(empty, "nice.db"), checkpoint.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = (&modelSource{stateDir: empty}).load(ctx)
	wantErr(t, err, "holds no checkpoint yet")

	// The only checkpoint damaged: nothing verifies, and the error says so.
	db, err := bolt.Open(filepath.Join(dir, "nice.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var key [8]byte
		binary.BigEndian.PutUint64(key[:], 4)
		chunks := tx.Bucket([]byte("checkpoints")).Bucket(key[:]).Bucket([]byte("chunks"))
		v := append([]byte(nil), chunks.Get([]byte{0, 0, 0, 0})...)
		v[100] ^= 1
		return chunks.Put([]byte{0, 0, 0, 0}, v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&modelSource{stateDir: dir}).load(ctx)
	wantErr(t, err, "no checkpoint in", "verifies: checkpoint at step 4 is corrupt")
}

func TestSourceFromACoordinator(t *testing.T) {
	ctx := context.Background()
	older, st := trained(t, 2).State(), trained(t, 5).State()
	srv := serveTiny(t, nil, older, st)
	l, err := (&modelSource{addr: srv.Addr(), tls: &creds.Flags{}, wait: time.Minute}).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, "coordinator", l.saved.State, st)
	if l.saved.State.Config.Epochs != 10 {
		t.Fatalf("the coordinator's state runs %d epochs, it was resumed to run 10", l.saved.State.Config.Epochs)
	}
	wantErr(t, errors.New(l.describe()), "step 5", "coordinator at "+srv.Addr())

	// No checkpoint yet.
	fresh := serveTiny(t, nil)
	_, err = (&modelSource{addr: fresh.Addr(), tls: &creds.Flags{}, wait: time.Minute}).load(ctx)
	wantErr(t, err, "has no checkpoint yet")

	// Nothing listens.
	dead := fmt.Sprintf("127.0.0.1:%d", clustertest.FreePort(t))
	_, err = (&modelSource{addr: dead, tls: &creds.Flags{}, wait: time.Minute}).load(ctx)
	wantErr(t, err, "nothing listens there", dead)

	// With credentials, a client without them is refused at the handshake;
	// with them, it gets the model.
	b, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "creds")
	if _, err := b.Write(tlsDir, creds.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	secure := serveTiny(t, b, st)
	_, err = (&modelSource{addr: secure.Addr(), tls: &creds.Flags{}, wait: time.Minute}).load(ctx)
	wantErr(t, err, "refused (TLS/credentials)", "--tls-dir")
	l, err = (&modelSource{addr: secure.Addr(), tls: &creds.Flags{Dir: tlsDir}, wait: time.Minute}).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, "coordinator with credentials", l.saved.State, st)
	// Credentials against a plaintext coordinator: refused too.
	_, err = (&modelSource{addr: srv.Addr(), tls: &creds.Flags{Dir: tlsDir}, wait: time.Minute}).load(ctx)
	wantErr(t, err, "refused (TLS/credentials)", "--insecure")
}

func TestSourceFlagErrors(t *testing.T) {
	ctx := context.Background()
	_, err := (&modelSource{addr: "127.0.0.1:1", stateDir: "x", tls: &creds.Flags{}}).load(ctx)
	wantErr(t, err, "--addr and --state-dir were both given", "exactly one")
	_, err = parseSourceSpec(filepath.Join(t.TempDir(), "nothing-here"), nil)
	wantErr(t, err, "no such file or folder, and not a coordinator address")
	s, err := parseSourceSpec("127.0.0.1:7000", nil)
	if err != nil || s.addr != "127.0.0.1:7000" {
		t.Fatalf("an address: %+v %v", s, err)
	}
	dir := t.TempDir()
	if s, err = parseSourceSpec(dir, nil); err != nil || s.stateDir != dir {
		t.Fatalf("a folder: %+v %v", s, err)
	}
	wd, _ := os.Getwd()
	t.Cleanup(func() { os.Chdir(wd) })
	os.Chdir(t.TempDir())
	_, err = (&modelSource{tls: &creds.Flags{}}).load(ctx)
	wantErr(t, err, "no model source given", defaultStateFile, "--addr", "--state-dir", "--state")
}

// A run continued through the other kind of checkpoint continues the same
// trajectory, bit for bit: k steps alone, then its state.nice made the
// first checkpoint of a coordinator (serve --resume-from), then that
// checkpoint taken back (train --resume-from, from the state folder or
// from the running coordinator) and trained on, equals the uninterrupted
// run.
func TestContinuingThroughTheOtherKindIsExact(t *testing.T) {
	ctx := context.Background()
	const k, more = 5, 6 // 7 steps an epoch: crosses an epoch end and history points
	whole := trained(t, k+more)

	first := trained(t, k)
	file := filepath.Join(t.TempDir(), "state.nice")
	if err := first.State().SaveFile(file); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := loadResumable(ctx, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seedStore(ctx, dir, 3, st); err != nil {
		t.Fatal(err)
	}
	fromDir, err := loadResumable(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	fromCoord := func() *train.State {
		l, err := loadFromStateDir(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		srv := serveTiny(t, nil, l.saved.State)
		s, err := loadResumable(ctx, srv.Addr(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	for name, s := range map[string]*train.State{"state folder": fromDir, "coordinator": fromCoord} {
		tr, err := train.Restore(s, syntheticData())
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < more; i++ {
			if _, err := tr.Step(); err != nil {
				t.Fatal(err)
			}
		}
		got, want := tr.State(), whole.State()
		sameState(t, name, got, want)
		if len(got.History.Points) != len(want.History.Points) || got.LossN != want.LossN || got.LossSum != want.LossSum {
			t.Fatalf("%s: history %v vs %v", name, got.History.Points, want.History.Points)
		}
	}
}

// lagging lists its checkpoints without the newest until it has been
// listed hide times: as a coordinator's store looks between a snapshot
// taken (and served) and its write.
type lagging struct {
	checkpoint.Store
	mu     sync.Mutex
	hide   int
	listed chan struct{} // a send after each listing, if not nil
}

func (l *lagging) List(ctx context.Context) ([]checkpoint.Listing, error) {
	list, err := l.Store.List(ctx)
	if l.listed != nil {
		defer func() { l.listed <- struct{}{} }()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hide > 0 && len(list) > 0 {
		l.hide--
		list = list[:len(list)-1]
	}
	return list, err
}

// The coordinator serves only the state it holds: a client that asked for
// an older checkpoint lists again and gets the newest, or, when the store
// never catches up, says so when its time is up.
func TestSourceFromACoordinatorWhoseStoreLags(t *testing.T) {
	ctx := context.Background()
	older, st := trained(t, 2).State(), trained(t, 5).State()
	srv := serveTinyStore(t, &lagging{Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), hide: 2}, nil, older, st)
	l, err := (&modelSource{addr: srv.Addr(), tls: &creds.Flags{}, wait: time.Minute}).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, "after the store caught up", l.saved.State, st)

	// The client gives up (its context ends) after the third listing.
	listed := make(chan struct{}, 8)
	stuck := serveTinyStore(t, &lagging{Store: checkpoint.NewMemory(checkpoint.MemoryOptions{}), hide: 1 << 30, listed: listed}, nil, older, st)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for range 3 {
			<-listed
		}
		cancel()
	}()
	_, err = (&modelSource{addr: stuck.Addr(), tls: &creds.Flags{}, wait: time.Minute}).load(cctx)
	wantErr(t, err, "holds a newer state than its newest stored checkpoint (step 2)")
}
