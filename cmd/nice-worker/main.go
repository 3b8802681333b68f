// Command nice-worker is one training process of a distributed nice run: it
// attaches to the coordinator (nice-coord serve), joins its gossip, and
// trains its share of every global batch.
//
//	nice-worker --coordinator host:7000 --join host:7946
//	nice-worker probe --url http://127.0.0.1:7081/readyz
//	nice-worker health --addr 127.0.0.1:7100
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/envflag"
	"github.com/nice-flow/nice/internal/logging"
	"github.com/nice-flow/nice/internal/membership"
	"github.com/nice-flow/nice/internal/netaddr"
	"github.com/nice-flow/nice/internal/probe"
	"github.com/nice-flow/nice/internal/schedpolicy"
	"github.com/nice-flow/nice/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "health":
		err = health(ctx, os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "probe":
		err = probe.Command(ctx, "nice-worker", "http://127.0.0.1:7081/healthz", os.Args[2:], os.Stdout)
	default:
		err = run(ctx, os.Args[1:])
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nice-worker: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nice-worker", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: nice-worker [flags]\n       nice-worker probe [--url http://127.0.0.1:7081/readyz]\n       nice-worker health [--addr host:port]\n\n"+
			"Attaches to the coordinator, joins its gossip and trains its share of every global batch.\n"+
			"It keeps its state while the coordinator is away and reattaches by itself. Listening beyond\n"+
			"loopback needs the cluster's credentials (--tls-dir, written by `nice-coord init`) or --insecure.\n\n"+
			"Flags (each also settable as NICE_<FLAG>, e.g. --coordinator as NICE_COORDINATOR):\n")
		fs.PrintDefaults()
	}
	host, _ := os.Hostname()
	d := worker.DefaultConfig()
	id := fs.String("id", host, "stable worker id (kept across restarts; default: host name)")
	coord := fs.String("coordinator", d.Coordinator, "coordinator gRPC address")
	join := fs.String("join", "", "gossip address of the coordinator to join (empty: no gossip)")
	listen := fs.String("listen", ":7100", "gRPC address for the ring and state transfer (port 0: any free port)")
	gossip := fs.String("gossip", ":7947", "gossip address of this worker (used with --join)")
	httpAddr := fs.String("http", ":7081", "HTTP address for GET /healthz, /readyz and /metrics (Prometheus), plaintext (empty: none)")
	advertise := fs.String("advertise", "", "host or IP others reach this worker at (default: this host's address on the route to --coordinator, else its first non-loopback IPv4; the listen host when --listen names one)")
	localDir := fs.String("local-dir", "", "folder the workers on this host share (a volume between containers): the ring also listens on a Unix socket there and reaches peers with one there through it, which costs the kernel about half as much as TCP; peers without one are reached over TCP (empty: TCP only)")
	data := fs.String("data", "", "folder with the four MNIST IDX .gz files (default: found automatically)")
	threads := fs.Int("threads", 0, "BLAS threads (0: the BLAS default)")
	batchSched := fs.Bool("sched-batch", true, "run this worker's threads under the kernel's batch scheduling policy (SCHED_BATCH, Linux): the same share of the CPU, without the wake-up preemptions that cost a context switch each; 5 to 10 % more samples/s on a full machine (false: the default policy)")
	digestEvery := fs.Int("digest-every", d.DigestEvery, "send a parameter digest every this many steps (0: never)")
	leaveTimeout := fs.Duration("leave-timeout", d.LeaveTimeout, "on SIGTERM, wait at most this long for the coordinator to checkpoint this worker's state and let it go (keep below the container's stop grace period)")
	sessionTimeout := fs.Duration("session-timeout", d.SessionTimeout, "reconnect when the coordinator has sent nothing, not even a heartbeat, for this long")
	verbose := fs.Bool("v", false, "log debug details")
	logFormat := logging.Flag(fs)
	fault := fs.String("fault", "", "fault injection for recovery tests: pause at phase@step:duration, phase gradient, ring, report, apply or eval (e.g. ring@5:500ms)")
	tlsFlags := creds.AddFlags(fs, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see nice-worker -h)", fs.Arg(0))
	}
	if _, err := envflag.Apply(fs); err != nil {
		return err
	}
	log := logging.New(os.Stderr, *logFormat, logging.Level(*verbose))
	if *threads > 0 {
		flow.SetBLASThreads(*threads)
	}
	if *batchSched {
		if n, err := schedpolicy.Batch(); err != nil {
			log.Warn("batch scheduling not set: the threads keep their policy", "err", err)
		} else {
			log.Debug("threads under SCHED_BATCH", "moved", n)
		}
	}
	if !flow.FastBLAS() {
		log.Warn("built without OpenBLAS: matrix products run in pure Go, about 6x slower (build with -tags openblas; see README)")
	}
	advHost := *advertise
	if advHost == "" {
		h, _, err := net.SplitHostPort(*listen)
		if err == nil && h != "" && h != "0.0.0.0" && h != "::" {
			advHost = h
		} else {
			advHost = advertiseToward(log, cmp.Or(*coord, *join))
		}
	}
	listeners := []creds.Listener{{Flag: "--listen", Addr: *listen}}
	if *join != "" {
		listeners = append(listeners, creds.Listener{Flag: "--gossip", Addr: *gossip})
	}
	bundle, err := tlsFlags.Select(log, listeners...)
	if err != nil {
		return err
	}
	cfg := d
	cfg.ID, cfg.Coordinator, cfg.Listen, cfg.AdvertiseHost, cfg.DataDir = *id, *coord, *listen, advHost, *data
	cfg.HTTP = *httpAddr
	cfg.LocalDir = *localDir
	cfg.Creds = bundle
	cfg.DigestEvery = *digestEvery
	cfg.LeaveTimeout = *leaveTimeout
	cfg.SessionTimeout = *sessionTimeout
	if *fault != "" {
		if cfg.Fault, err = worker.ParseFault(*fault); err != nil {
			return err
		}
	}
	cfg.Logger = log
	w, err := worker.New(cfg)
	if err != nil {
		return err
	}
	if *join != "" {
		// Gossip is joined in the background: training does not wait for it,
		// and the join retries until the coordinator's gossip answers.
		joined := make(chan *membership.Gossip, 1)
		go func() {
			g, err := joinGossip(ctx, *join, *gossip, advHost, w, bundle, log)
			if err != nil && ctx.Err() == nil {
				log.Error("gossip not joined", "err", err)
			}
			joined <- g
		}()
		defer func() {
			if g := <-joined; g != nil {
				lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				g.Leave(lctx)
				cancel()
				g.Shutdown()
			}
		}()
	}
	return w.Run(ctx)
}

func joinGossip(ctx context.Context, seed, bind, advHost string, w *worker.Worker, b *creds.Bundle, log *slog.Logger) (*membership.Gossip, error) {
	bh, bp, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("--gossip %q: %w", bind, err)
	}
	port, err := strconv.Atoi(bp)
	if err != nil {
		return nil, fmt.Errorf("--gossip %q: %w", bind, err)
	}
	if bh == "" {
		bh = "0.0.0.0"
	}
	gc := membership.DefaultConfig()
	gc.BindAddr, gc.BindPort, gc.AdvertiseAddr = bh, port, advHost
	gc.Seeds = []string{seed}
	gc.Meta = membership.Meta{Role: membership.RoleWorker, WorkerID: w.ID(), GRPCAddr: w.Addr(), Incarnation: w.Incarnation()}
	gc.Creds = b
	gc.Logger = log
	g, err := membership.Join(ctx, gc)
	if err != nil {
		return nil, fmt.Errorf("joining gossip through %s: %w", seed, err)
	}
	return g, nil
}

func health(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nice-worker health", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:7100", "worker gRPC address")
	logging.Flag(fs) // accepted for uniformity: health logs nothing
	tlsFlags := creds.AddFlags(fs, false)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := envflag.Apply(fs); err != nil {
		return err
	}
	b, err := tlsFlags.Select(nil)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*addr, b.DialOption())
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("worker at %s does not answer: %w", *addr, err)
	}
	if r.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("worker at %s is %v", *addr, r.Status)
	}
	return nil
}

// advertiseToward picks the address to advertise when no flag names one:
// this host's address on the route to the coordinator (target), which on a
// host with several networks is the one its peers share; else the first.
func advertiseToward(log *slog.Logger, target string) string {
	if target == "" {
		return netaddr.Default()
	}
	h, err := netaddr.Toward(target)
	if err != nil {
		// The coordinator's name does not resolve yet: the first address
		// will do on a host with one network.
		h = netaddr.Default()
		log.Warn("advertising this host's first address: the route to the coordinator is unknown (set --advertise on a host with several networks)",
			"addr", h, "err", err)
	}
	return h
}
