package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/logging"
	"github.com/nice-flow/nice/internal/membership"
	"github.com/nice-flow/nice/internal/netaddr"
	"github.com/nice-flow/nice/internal/rpcopt"
)

func init() {
	register("serve", command{summary: "run the coordinator of a distributed training run", run: runServe})
}

// serveFlags are the coordinator's settings, shared by serve and up.
type serveFlags struct {
	tf        trainFlags
	listen    string
	http      string
	gossip    string
	advertise string
	stateDir  string
	minW      int
	ckptEvery int
	keep      int
	settle    time.Duration
	stepTO    time.Duration
	sessionTO time.Duration
	sessions  int
	samples   int
	maxSteps  int64
	finalWait time.Duration
	verbose   bool
	logFormat func() logging.Format // --log-format, read once parsed
	tls       *creds.Flags
}

func addServeFlags(fs *flag.FlagSet, sf *serveFlags, listen, httpAddr, gossip string) {
	addTrainFlags(fs, &sf.tf)
	fs.StringVar(&sf.listen, "listen", listen, "gRPC `address` that workers and nice-coord status connect to")
	fs.StringVar(&sf.http, "http", httpAddr, "HTTP `address` of the dashboard (/), /healthz, /readyz, /status and Prometheus /metrics, plaintext (empty: none)")
	fs.StringVar(&sf.gossip, "gossip", gossip, "gossip (memberlist) address workers join through (empty: no gossip)")
	fs.StringVar(&sf.advertise, "advertise", "", "host or IP others reach this coordinator at (default: this host's first non-loopback IPv4, or 127.0.0.1 for loopback listeners)")
	fs.StringVar(&sf.stateDir, "state-dir", "nice-state", "folder of the checkpoint file (nice.db), the ledger and the sample grids")
	fs.IntVar(&sf.minW, "min-workers", 1, "workers needed to train")
	fs.IntVar(&sf.ckptEvery, "checkpoint-every", 100, "take a checkpoint every this many steps (also at each epoch end and on shutdown)")
	fs.IntVar(&sf.keep, "keep", 3, "checkpoints to keep")
	fs.DurationVar(&sf.settle, "settle", 500*time.Millisecond, "quiet time after a worker joins before a new generation takes it in")
	fs.DurationVar(&sf.stepTO, "step-timeout", 3*time.Minute, "redo a step that takes longer than this")
	fs.DurationVar(&sf.sessionTO, "session-timeout", rpcopt.DefaultSessionTimeout, "drop a worker that has sent nothing, not even a heartbeat, for this long (it must exceed the longest pause of a live worker)")
	fs.IntVar(&sf.sessions, "max-sessions", coordinator.DefaultMaxSessions, "refuse worker sessions beyond this many open at once (keep it above the number of workers)")
	fs.IntVar(&sf.samples, "samples", 100, "samples in each epoch's grid (0: none)")
	fs.Int64Var(&sf.maxSteps, "max-steps", 0, "hold training once this many steps are committed in all, with a checkpoint (0: train every epoch)")
	fs.DurationVar(&sf.finalWait, "final-checkpoint-timeout", coordinator.DefaultFinalCheckpointTimeout,
		"how long to wait for the final checkpoint (of a stop, or of the end of training with up) before exiting with an error that says which checkpoint stands")
	fs.BoolVar(&sf.verbose, "v", false, "log debug details")
	sf.logFormat = func() logging.Format { return logFormat(fs) }
	sf.tls = creds.AddFlags(fs, true)
}

// advertiseHost picks the host others should use for a listen address.
func advertiseHost(flagValue, listen string) string {
	if flagValue != "" {
		return flagValue
	}
	host, _, err := net.SplitHostPort(listen)
	if err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		return host
	}
	return netaddr.Default()
}

// config builds the coordinator's configuration; log receives what the
// credentials policy has to say.
func (sf *serveFlags) config(log *slog.Logger) (coordinator.Config, error) {
	tc, err := sf.tf.config()
	if err != nil {
		return coordinator.Config{}, err
	}
	listeners := []creds.Listener{{Flag: "--listen", Addr: sf.listen}}
	if sf.gossip != "" {
		listeners = append(listeners, creds.Listener{Flag: "--gossip", Addr: sf.gossip})
	}
	bundle, err := sf.tls.Select(log, listeners...)
	if err != nil {
		return coordinator.Config{}, err
	}
	mc := coordinator.DefaultMachine()
	mc.MinWorkers = sf.minW
	mc.CheckpointEvery = sf.ckptEvery
	mc.Settle = sf.settle
	mc.StepTimeout = sf.stepTO
	mc.StopAt = sf.maxSteps
	host := advertiseHost(sf.advertise, sf.listen)
	adv, err := netaddr.Join(host, sf.listen)
	if err != nil {
		return coordinator.Config{}, fmt.Errorf("--listen: %w", err)
	}
	c := coordinator.Config{
		Train: tc, Listen: sf.listen, Advertise: adv, HTTP: sf.http, StateDir: sf.stateDir, DataDir: sf.tf.dataDir,
		Machine: mc, KeepCheckpoints: sf.keep, Samples: sf.samples, SessionTimeout: sf.sessionTO, MaxSessions: sf.sessions,
		FinalCheckpointTimeout: sf.finalWait, Creds: bundle, Logger: log,
	}
	if sf.gossip != "" {
		gh, gp, err := net.SplitHostPort(sf.gossip)
		if err != nil {
			return c, fmt.Errorf("--gossip %q: %w", sf.gossip, err)
		}
		port, err := strconv.Atoi(gp)
		if err != nil {
			return c, fmt.Errorf("--gossip %q: port: %w", sf.gossip, err)
		}
		g := membership.DefaultConfig()
		if gh == "" {
			gh = "0.0.0.0"
		}
		g.BindAddr, g.BindPort = gh, port
		g.AdvertiseAddr = advertiseHost(sf.advertise, sf.gossip)
		c.Gossip = &g
	}
	return c, nil
}

// newLogger is the logger of the coordinator's commands, in the format of
// --log-format.
func (sf *serveFlags) newLogger() *slog.Logger {
	f := logging.Text
	if sf.logFormat != nil {
		f = sf.logFormat()
	}
	return logging.New(os.Stderr, f, logging.Level(sf.verbose))
}

func runServe(ctx context.Context, args []string) error {
	fs := newFlagSet("serve", "[flags]",
		"Runs the coordinator: workers (nice-worker) attach to it over gRPC and join its gossip; it plans\n"+
			"the ring, commits steps, takes checkpoints into --state-dir and resumes from the newest one that\n"+
			"verifies. Training flags apply to a new run; a resumed run keeps its checkpoint's settings\n"+
			"(only --epochs may grow). Listening beyond loopback needs the cluster's credentials (--tls-dir,\n"+
			"written by `nice-coord init`) or --insecure.")
	var sf serveFlags
	addServeFlags(fs, &sf, ":7000", ":7080", ":7946")
	resumeFrom := fs.String("resume-from", "", "start a new --state-dir from another run: a state.nice of `nice-coord train`, another coordinator's state folder, or a running coordinator's host:port; it becomes the first checkpoint")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *resumeFrom != "" {
		st, err := loadResumable(ctx, *resumeFrom, sf.tls)
		if err != nil {
			return err
		}
		if _, err := seedStore(ctx, sf.stateDir, sf.keep, st); err != nil {
			return fmt.Errorf("--resume-from: %w", err)
		}
	}
	srv, _, err := sf.start(nil)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

// start opens the coordinator and notes its address in the state folder for
// `nice-coord status`. A nil store means the bbolt file in the state folder.
func (sf *serveFlags) start(store checkpoint.Store) (*coordinator.Server, coordinator.Config, error) {
	cfg, err := sf.config(sf.newLogger())
	if err != nil {
		return nil, cfg, err
	}
	cfg.Store = store
	srv, err := coordinator.New(cfg)
	if err != nil {
		return nil, cfg, err
	}
	if err := writeAddrFile(sf.stateDir, srv.Advertised(), cfg.Creds); err != nil {
		cfg.Logger.Warn("status address file not written", "err", err)
	}
	return srv, cfg, nil
}

// addrFile is where serve and up note their gRPC address, so that
// `nice-coord status` run in the same folder finds them; tlsDirFile is
// where they note the credentials folder they use (absent without).
func addrFile(stateDir string) string   { return filepath.Join(stateDir, "coordinator.addr") }
func tlsDirFile(stateDir string) string { return filepath.Join(stateDir, "coordinator.tls-dir") }

func writeAddrFile(stateDir, addr string, b *creds.Bundle) error {
	if err := os.WriteFile(addrFile(stateDir), []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	if b == nil {
		if err := os.Remove(tlsDirFile(stateDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	dir, err := filepath.Abs(b.Dir)
	if err != nil {
		return err
	}
	return os.WriteFile(tlsDirFile(stateDir), []byte(dir+"\n"), 0o644)
}
