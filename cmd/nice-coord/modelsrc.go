package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/rpcopt"
	"github.com/nice-flow/nice/internal/statexfer"
	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// defaultStateFile is where `nice-coord train` keeps its state by default:
// the model source when none is named.
const defaultStateFile = "run/state.nice"

// modelSource is where sample, eval, inpaint and export take a model from:
// exactly one of a running coordinator, a stopped coordinator's state
// folder, or a file (a state.nice or an export).
type modelSource struct {
	addr, stateDir, file string
	tls                  *creds.Flags
	// wait bounds the whole load from a coordinator: the listing (which
	// verifies every checkpoint), the transfer and the retries.
	wait time.Duration
}

func addSourceFlags(fs *flag.FlagSet) *modelSource {
	s := &modelSource{wait: 3 * time.Minute}
	fs.StringVar(&s.addr, "addr", "", "take the newest verified checkpoint of the coordinator running at this gRPC address (host:port)")
	fs.StringVar(&s.stateDir, "state-dir", "", "take the newest checkpoint that verifies from a stopped coordinator's state folder (its nice.db)")
	fs.StringVar(&s.file, "state", "", "take the model from a file: a training state (train's --out folder holds state.nice) or an exported model (default "+defaultStateFile+" when no source is given)")
	s.tls = creds.AddFlags(fs, false)
	return s
}

// loadedModel is a model with where it came from.
type loadedModel struct {
	saved *train.Saved
	// from names the source, e.g. "the coordinator at 127.0.0.1:7000".
	from string
}

// describe says which checkpoint is used, for the first line of output.
func (l *loadedModel) describe() string {
	p := l.saved.Model.Position
	kind := "training state"
	if l.saved.State == nil {
		kind = "exported model"
	}
	return fmt.Sprintf("model: step %d (%s + %s), %s from %s", p.Step, count(p.Epoch, "epoch"), count(p.StepInEpoch, "step"), kind, l.from)
}

// count is "1 epoch", "2 epochs".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// model builds the flow model of the loaded parameters.
func (l *loadedModel) model() (*flow.Model, error) {
	e := l.saved.Model
	m, err := flow.New(e.Config.Model)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.from, err)
	}
	if len(e.Params) != m.NumParams() {
		return nil, fmt.Errorf("%s holds %d parameters, its model needs %d", l.from, len(e.Params), m.NumParams())
	}
	copy(m.Params, e.Params)
	return m, nil
}

// state is the full training state, or an error saying why an export
// cannot continue training.
func (l *loadedModel) state() (*train.State, error) {
	if l.saved.State == nil {
		return nil, fmt.Errorf("%s is an exported model: %w; continue from the run's state.nice or its coordinator's checkpoints (--state-dir or --addr)", l.from, train.ErrExportNotResumable)
	}
	return l.saved.State, nil
}

// load reads the model from the one source given.
func (s *modelSource) load(ctx context.Context) (*loadedModel, error) {
	var given []string
	for _, f := range []struct{ name, v string }{{"--addr", s.addr}, {"--state-dir", s.stateDir}, {"--state", s.file}} {
		if f.v != "" {
			given = append(given, f.name)
		}
	}
	if len(given) > 1 {
		both := "both"
		if len(given) > 2 {
			both = "all"
		}
		return nil, fmt.Errorf("%s were %s given (on the command line or as NICE_* variables): name exactly one model source", strings.Join(given, " and "), both)
	}
	switch {
	case s.addr != "":
		tls := s.tls
		if tls == nil {
			tls = &creds.Flags{}
		}
		b, err := tls.Select(nil)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, s.wait)
		defer cancel()
		return loadFromCoordinator(ctx, s.addr, b)
	case s.stateDir != "":
		return loadFromStateDir(ctx, s.stateDir)
	case s.file != "":
		return loadFromFile(s.file)
	}
	if _, err := os.Stat(defaultStateFile); errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("no model source given and there is no %s: name one with --addr host:port (a running coordinator), --state-dir DIR (a stopped one's state folder) or --state FILE", defaultStateFile)
	}
	return loadFromFile(defaultStateFile)
}

// loadFromFile reads a state.nice or an export.
func loadFromFile(path string) (*loadedModel, error) {
	sv, err := train.LoadSaved(path)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("model file %s does not exist (--state names a state.nice or an exported model)", path)
	}
	if err != nil {
		return nil, err
	}
	return &loadedModel{saved: sv, from: "file " + path}, nil
}

// openStateDir opens a stopped coordinator's checkpoint file read-only;
// ask says what to do instead when a running coordinator holds it ("" for
// asking that coordinator with --addr).
func openStateDir(dir, ask string) (*checkpoint.Bolt, string, error) {
	path := filepath.Join(dir, "nice.db")
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return nil, path, fmt.Errorf("no checkpoint file %s: --state-dir names the folder a coordinator keeps its checkpoints in (serve's --state-dir, nice-state by default)", path)
		}
		return nil, path, fmt.Errorf("checkpoint file %s: %w", path, err)
	}
	store, err := checkpoint.OpenBolt(path, checkpoint.BoltOptions{ReadOnly: true, InitialMmapSize: -1})
	if errors.Is(err, checkpoint.ErrLocked) {
		hint := "ask it with --addr host:port instead, or stop it first"
		if b, rerr := os.ReadFile(addrFile(dir)); rerr == nil && strings.TrimSpace(string(b)) != "" {
			hint = fmt.Sprintf("ask it with --addr %s instead (the address it noted in %s), or stop it first", strings.TrimSpace(string(b)), addrFile(dir))
		}
		if ask != "" {
			hint = ask
		}
		return nil, path, fmt.Errorf("%s is held by a running coordinator (it locks its checkpoint file while it runs): %s", path, hint)
	}
	return store, path, err
}

// loadFromStateDir reads the newest checkpoint that verifies from a
// stopped coordinator's checkpoint file, opened read-only.
func loadFromStateDir(ctx context.Context, dir string) (*loadedModel, error) {
	store, path, err := openStateDir(dir, "")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	cp, corrupt, err := store.LoadNewestValid(ctx)
	problems := make([]string, len(corrupt))
	for i, ce := range corrupt {
		problems[i] = ce.Error()
	}
	if errors.Is(err, checkpoint.ErrNoCheckpoint) {
		if len(corrupt) > 0 {
			return nil, fmt.Errorf("no checkpoint in %s verifies: %s", path, strings.Join(problems, "; "))
		}
		return nil, fmt.Errorf("%s holds no checkpoint yet (a coordinator takes one every --checkpoint-every steps, at each epoch end and when it stops)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading checkpoints from %s: %w", path, err)
	}
	st, err := train.DecodeState(cp.Blob)
	if err != nil {
		return nil, fmt.Errorf("checkpoint at step %d of %s: %w", cp.Step, path, err)
	}
	from := fmt.Sprintf("the checkpoint at step %d in %s", cp.Step, path)
	if len(problems) > 0 {
		from += fmt.Sprintf(" (newer ones skipped: %s)", strings.Join(problems, "; "))
	}
	return &loadedModel{saved: &train.Saved{State: st, Model: st.Export()}, from: from}, nil
}

// maxFetchedState bounds the size of a state fetched from a coordinator,
// whatever its listing says: some 10 times the paper's model.
const maxFetchedState = 2 << 30

// loadFromCoordinator lists a running coordinator's checkpoints and
// fetches the state of the newest that verifies. The coordinator serves
// the state it holds, which is that checkpoint's, except for the moments
// between taking a newer one and storing it: then the listing is asked
// again until ctx ends.
func loadFromCoordinator(ctx context.Context, addr string, b *creds.Bundle) (*loadedModel, error) {
	conn, err := grpc.NewClient(addr, b.DialOption(), grpc.WithDefaultCallOptions(rpcopt.WorkerCallLimits()...))
	if err != nil {
		return nil, fmt.Errorf("coordinator address %q: %w", addr, err)
	}
	defer conn.Close()
	client := nicepb.NewCoordinatorClient(conn)
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	// lagged says why the last try found the coordinator holding a newer
	// state than it lists: the error to give if time runs out.
	var lagged error
	for {
		newest, err := newestVerified(ctx, client, addr, b)
		if err != nil && lagged != nil && ctx.Err() != nil {
			return nil, lagged
		}
		if err != nil {
			return nil, err
		}
		pos := &nicepb.Position{Step: int64(newest.Step), Epoch: int32(newest.Epoch), StepInEpoch: int32(newest.StepInEpoch)}
		// The state served is the checkpoint's blob, or (after a resume)
		// the same state encoded again with a grown epoch count: a few
		// bytes more or less.
		limit := statexfer.Expect{Min: 1, Max: min(newest.Bytes+1<<16, maxFetchedState)}
		blob, err := statexfer.Fetch(ctx, conn, statexfer.Request{Source: addr, Position: pos, Size: limit})
		if errors.Is(err, statexfer.ErrUnavailable) {
			lagged = fmt.Errorf("the coordinator at %s holds a newer state than its newest stored checkpoint (step %d) and did not store it in time (%v); try again, or see `nice-coord status`", addr, newest.Step, err)
			select {
			case <-retry.C:
				continue
			case <-ctx.Done():
				return nil, lagged
			}
		}
		if err != nil && lagged != nil && ctx.Err() != nil {
			return nil, lagged
		}
		if err != nil {
			return nil, explainRPCError(addr, b, err)
		}
		st, err := train.DecodeState(blob)
		if err != nil {
			return nil, fmt.Errorf("the state the coordinator at %s sent: %w", addr, err)
		}
		if st.Position.Step != int64(newest.Step) {
			return nil, fmt.Errorf("the coordinator at %s sent the state at step %d for its checkpoint at step %d", addr, st.Position.Step, newest.Step)
		}
		return &loadedModel{saved: &train.Saved{State: st, Model: st.Export()}, from: fmt.Sprintf("the checkpoint at step %d of the coordinator at %s", newest.Step, addr)}, nil
	}
}

// newestVerified asks the coordinator for its checkpoints and returns the
// newest that verifies.
func newestVerified(ctx context.Context, client nicepb.CoordinatorClient, addr string, b *creds.Bundle) (coordinator.CheckpointInfo, error) {
	r, err := client.Checkpoints(ctx, &nicepb.CheckpointsRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return coordinator.CheckpointInfo{}, explainRPCError(addr, b, err)
	}
	var list []coordinator.CheckpointInfo
	if err := json.Unmarshal(r.Json, &list); err != nil {
		return coordinator.CheckpointInfo{}, fmt.Errorf("the coordinator at %s sent a checkpoint listing that does not parse: %w", addr, err)
	}
	var bad []string
	for i := len(list) - 1; i >= 0; i-- {
		c := list[i]
		if c.Verified {
			if c.Bytes < 1 {
				return c, fmt.Errorf("the coordinator at %s lists its checkpoint at step %d with %d bytes", addr, c.Step, c.Bytes)
			}
			return c, nil
		}
		bad = append(bad, fmt.Sprintf("step %d: %s", c.Step, c.Problem))
	}
	if len(bad) > 0 {
		return coordinator.CheckpointInfo{}, fmt.Errorf("none of the checkpoints of the coordinator at %s verifies (%s)", addr, strings.Join(bad, "; "))
	}
	return coordinator.CheckpointInfo{}, fmt.Errorf("the coordinator at %s has no checkpoint yet (it takes one every --checkpoint-every steps, at each epoch end and when it stops): try again later", addr)
}

// explainRPCError turns a failed call to the coordinator at addr into what
// a person can act on, as status does (status_reach.go): nothing listens
// there, refused at the TLS handshake and which credentials to pass, timed
// out, not a gRPC server, or the coordinator's own answer.
func explainRPCError(addr string, b *creds.Bundle, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 4*reachTimeout)
	defer cancel()
	return reach{addr: addr, bundle: b, timeout: reachTimeout}.explainCallError(ctx, err)
}

// parseSourceSpec reads a --resume-from value: an existing file (a
// state.nice), an existing folder (a coordinator's state folder), or else
// a host:port of a running coordinator.
func parseSourceSpec(spec string, tls *creds.Flags) (*modelSource, error) {
	s := &modelSource{tls: tls, wait: 3 * time.Minute}
	fi, err := os.Stat(spec)
	switch {
	case err == nil && fi.IsDir():
		s.stateDir = spec
	case err == nil:
		s.file = spec
	default:
		host, port, perr := net.SplitHostPort(spec)
		if perr != nil || host == "" || port == "" {
			return nil, fmt.Errorf("--resume-from %q: no such file or folder, and not a coordinator address host:port", spec)
		}
		s.addr = spec
	}
	if s.tls == nil {
		s.tls = &creds.Flags{}
	}
	return s, nil
}

// loadResumable loads the full training state (parameters and Adam's
// moments) that --resume-from names, saying where it came from.
func loadResumable(ctx context.Context, spec string, tls *creds.Flags) (*train.State, error) {
	src, err := parseSourceSpec(spec, tls)
	if err != nil {
		return nil, err
	}
	l, err := src.load(ctx)
	if err != nil {
		return nil, fmt.Errorf("--resume-from: %w", err)
	}
	st, err := l.state()
	if err != nil {
		return nil, fmt.Errorf("--resume-from: %w", err)
	}
	fmt.Printf("continuing from %s\n", strings.TrimPrefix(l.describe(), "model: "))
	return st, nil
}
