package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	"github.com/nice-flow/nice/coordinator"
	"github.com/nice-flow/nice/coordinator/checkpoint"
	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/rpcopt"
	nicepb "github.com/nice-flow/nice/proto"
)

func init() {
	register("status", command{summary: "show a running coordinator's workers, ring, progress and checkpoints", run: runStatus})
	register("checkpoints", command{summary: "list the checkpoints (step, epoch, time, size, verified)", run: runCheckpoints})
}

// coordinatorAddr resolves where the coordinator is: the flag (or NICE_ADDR),
// else the address `serve`/`up` noted in ./nice-state, else 127.0.0.1:7000.
func coordinatorAddr(flagValue, stateDir string) string {
	if flagValue != "" {
		return flagValue
	}
	if b, err := os.ReadFile(addrFile(stateDir)); err == nil {
		if a := strings.TrimSpace(string(b)); a != "" {
			return a
		}
	}
	return "127.0.0.1:7000"
}

// clientCreds resolves the credentials of a client command: --tls-dir (or
// NICE_TLS_DIR), else the folder serve or up noted in stateDir, else none;
// --insecure means none whatever the rest says.
func clientCreds(f *creds.Flags, stateDir string) (*creds.Bundle, error) {
	if f.Dir == "" && !f.Insecure {
		if b, err := os.ReadFile(tlsDirFile(stateDir)); err == nil {
			f.Dir = strings.TrimSpace(string(b))
		}
	}
	return f.Select(nil)
}

// coordinatorClient is a connection to the coordinator's gRPC server.
type coordinatorClient struct {
	nicepb.CoordinatorClient
	addr   string
	secure bool
	reach  reach
}

func dialCoordinator(addr string, b *creds.Bundle) (*coordinatorClient, func(), error) {
	conn, err := grpc.NewClient(addr, b.DialOption(), grpc.WithDefaultCallOptions(rpcopt.WorkerCallLimits()...))
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator address %q: %w", addr, err)
	}
	return &coordinatorClient{CoordinatorClient: nicepb.NewCoordinatorClient(conn), addr: addr, secure: b != nil,
			reach: reach{addr: addr, bundle: b, timeout: reachTimeout}},
		func() { conn.Close() }, nil
}

func fetchStatus(ctx context.Context, c *coordinatorClient) (*coordinator.Status, error) {
	cctx, cancel := context.WithTimeout(ctx, c.reach.timeout)
	defer cancel()
	addr := c.addr
	r, err := c.Status(cctx, &nicepb.StatusRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return nil, c.reach.explainCallError(ctx, err)
	}
	var st coordinator.Status
	if err := json.Unmarshal(r.Json, &st); err != nil {
		return nil, fmt.Errorf("coordinator at %s sent a status that does not parse: %w", addr, err)
	}
	return &st, nil
}

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status", "[--addr host:port] [--tls-dir DIR] [--json] [--watch]",
		"Shows the coordinator's workers (id, address, state, rank, gossip state), the generation and\n"+
			"ring order, epoch and step, a progress bar with the time left (ETA, at the speed of recent\n"+
			"steady training), samples/s, the last training NLL, the last test log-likelihood and\n"+
			"bits/dim, the all-reduce bus bandwidth, and the last checkpoint. Failing checkpoint writes or\n"+
			"ledger writes come first, as DEGRADED lines. A cluster with credentials answers only a client\n"+
			"that presents them: --tls-dir (or NICE_TLS_DIR), else the folder serve or up noted in\n"+
			"--state-dir. When no answer comes, it says why: nothing listens there, refused at the TLS\n"+
			"handshake (which credentials to pass), timed out, not a gRPC server, or the coordinator's\n"+
			"own error.")
	addr := fs.String("addr", "", "coordinator gRPC address (default: the one noted in --state-dir by serve or up, else 127.0.0.1:7000)")
	stateDir := fs.String("state-dir", "nice-state", "folder where serve or up noted their address")
	asJSON := fs.Bool("json", false, "print one JSON object (with --watch, one a line per refresh)")
	watch := fs.Bool("watch", false, "refresh every --every until interrupted: redrawn in place on a terminal, else a new block "+
		"per refresh; an error is shown and the watch goes on")
	every := fs.Duration("every", 2*time.Second, "refresh interval for --watch")
	quiet := fs.Bool("quiet", false, "print nothing; exit 0 if the coordinator answers (for health checks)")
	tlsFlags := creds.AddFlags(fs, false)
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	a := coordinatorAddr(*addr, *stateDir)
	b, err := clientCreds(tlsFlags, *stateDir)
	if err != nil {
		return err
	}
	client, closeConn, err := dialCoordinator(a, b)
	if err != nil {
		return err
	}
	defer closeConn()
	client.reach.tlsDir = tlsFlags.Dir
	v := statusView{addr: a, json: *asJSON, quiet: *quiet, watch: *watch, every: *every, terminal: isTerminal(os.Stdout)}
	if v.watch && v.every <= 0 {
		return fmt.Errorf("--every %v: the refresh interval must be positive (e.g. --every 2s)", v.every)
	}
	return v.show(ctx, os.Stdout, os.Stderr, func(ctx context.Context) (*coordinator.Status, error) { return fetchStatus(ctx, client) })
}

// statusView is how runStatus shows the status.
type statusView struct {
	addr               string
	json, quiet, watch bool
	every              time.Duration
	terminal           bool // stdout is a terminal: --watch redraws in place
}

// Clearing a terminal: cursor home, then erase to the end of the screen.
const clearScreen = "\033[H\033[J"

// show fetches and prints the status once, or with watch every interval
// until ctx ends. A failed fetch ends a single show with its error; while
// watching it is printed (to errOut, or in place on a terminal) and the
// watch goes on, since a coordinator that restarts answers again.
func (v statusView) show(ctx context.Context, out, errOut io.Writer, fetch func(context.Context) (*coordinator.Status, error)) error {
	tick := time.NewTicker(max(v.every, time.Millisecond))
	defer tick.Stop()
	for {
		st, err := fetch(ctx)
		if ctx.Err() != nil {
			return nil // interrupted
		}
		if err != nil && !v.watch {
			return err
		}
		v.print(out, errOut, st, err)
		if !v.watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// print shows one fetch's status, or its error (while watching).
func (v statusView) print(out, errOut io.Writer, st *coordinator.Status, err error) {
	now := time.Now().UTC().Format(time.RFC3339)
	switch {
	case v.quiet:
	case err != nil && v.watch && v.terminal && !v.json:
		fmt.Fprintf(out, "%s%s  (refreshed every %v; Ctrl-C ends)\n%v\n", clearScreen, now, v.every, err)
	case err != nil:
		fmt.Fprintf(errOut, "%s: %v\n", now, err)
	case v.json:
		b, _ := json.Marshal(st)
		fmt.Fprintln(out, string(b))
	case v.watch && v.terminal:
		var buf bytes.Buffer // drawn at once, so the screen does not flicker
		fmt.Fprintf(&buf, "%s%s  (refreshed every %v; Ctrl-C ends)\n", clearScreen, now, v.every)
		printStatus(&buf, v.addr, st)
		out.Write(buf.Bytes())
	case v.watch:
		fmt.Fprintf(out, "--- %s\n", now)
		printStatus(out, v.addr, st)
	default:
		printStatus(out, v.addr, st)
	}
}

// isTerminal reports whether f is a terminal (a character device), where
// redrawing in place is possible.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printStatus(w io.Writer, addr string, st *coordinator.Status) {
	fmt.Fprintf(w, "coordinator %s  phase %s  generation %d  config %s\n", addr, st.Phase, st.Generation, st.ConfigHash)
	printProblems(w, st)
	pct := 0.0
	if st.StepsPerEpoch > 0 {
		pct = 100 * float64(st.StepInEpoch) / float64(st.StepsPerEpoch)
	}
	fmt.Fprintf(w, "epoch %d/%d  step %d (%d/%d of the epoch, %.1f%%)  %.0f samples/s  train NLL %.2f nats\n",
		min(st.Epoch, st.Epochs), st.Epochs, st.Step, st.StepInEpoch, st.StepsPerEpoch, pct, st.SamplesPerSec, st.TrainNLL)
	fmt.Fprintln(w, progressLine(st))
	if n := len(st.Scores); n > 0 {
		fmt.Fprintf(w, "test log-likelihood %.2f nats per image, %.4f bits/dim (after epoch %d)\n", st.TestLL, st.BitsPerDim, st.Scores[n-1].Epoch)
	} else {
		fmt.Fprintln(w, "test log-likelihood: not scored yet (after the first epoch)")
	}
	if st.BusBW > 0 {
		fmt.Fprintf(w, "all-reduce bus bandwidth %.2f GB/s\n", st.BusBW)
	}
	if st.LastCheckpointStep > 0 || st.LastCheckpointAgeSeconds > 0 {
		fmt.Fprintf(w, "last checkpoint: step %d, %.0f s ago (%.0f MB written in %.2f s)\n", st.LastCheckpointStep,
			st.LastCheckpointAgeSeconds, float64(st.LastCheckpointBytes)/1e6, st.LastCheckpointWriteSeconds)
	} else {
		fmt.Fprintln(w, "last checkpoint: none taken by this coordinator yet")
	}
	ledger := "ledger ok"
	if !st.LedgerOK {
		ledger = fmt.Sprintf("LEDGER ERRORS %d", st.LedgerErrors)
	}
	digests := "replica digests agree"
	if !st.DigestsAgree {
		digests = fmt.Sprintf("DIGEST MISMATCHES %d", st.DigestMismatches)
	}
	fmt.Fprintf(w, "steps committed %d (redone %d), generations %d, %s, %s\n", st.CommittedSteps, st.RedoneSteps, st.Generations, ledger, digests)
	if st.NonFiniteSteps > 0 {
		fmt.Fprintf(w, "HELD: step %d is not finite (not applied); restart with a lower --lr or with --clip 1\n", st.Step)
	}
	if r := st.Refused; r.Total() > 0 || st.CheckpointsRefused > 0 {
		fmt.Fprintf(w, "refused messages: %d invalid, %d from non-members, %d identity, %d bad hellos, %d stale; checkpoints refused %d\n",
			r.Invalid, r.NonMember, r.Identity, r.Hello, r.Stale, st.CheckpointsRefused)
		if st.LastRefused != "" {
			fmt.Fprintf(w, "  newest: %s\n", st.LastRefused)
		}
	}
	if len(st.Ring) > 0 {
		fmt.Fprintf(w, "ring: %s\n", strings.Join(st.Ring, " -> "))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tADDRESS\tSTATE\tRANK\tGOSSIP")
	for _, wk := range st.Workers {
		rank := "-"
		if wk.Rank >= 0 {
			rank = fmt.Sprint(wk.Rank)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", wk.ID, wk.Addr, wk.State, rank, wk.Gossip)
	}
	tw.Flush()
	if len(st.Workers) == 0 {
		fmt.Fprintln(w, "(no workers attached)")
	}
}

// progressBarWidth is the number of cells of the progress bar.
const progressBarWidth = 30

// progressLine is the run's progress over all its steps as a bar, and the
// time left.
func progressLine(st *coordinator.Status) string {
	if st.StepsTotal <= 0 {
		return "progress: unknown (the coordinator reports no step count)"
	}
	frac := min(1, max(0, float64(st.Step)/float64(st.StepsTotal)))
	full := int(frac * progressBarWidth)
	bar := strings.Repeat("#", full) + strings.Repeat("-", progressBarWidth-full)
	line := fmt.Sprintf("progress [%s] %5.1f%%  step %d/%d  ", bar, 100*frac, st.Step, st.StepsTotal)
	switch {
	case st.Phase == string(coordinator.Finished):
		return line + "done"
	case st.ETASeconds <= 0:
		return line + "ETA unknown (measured once two steps of one generation are committed)"
	}
	line += fmt.Sprintf("ETA %s (%.2f s a step)", formatETA(st.ETASeconds), st.SecondsPerStep)
	if st.Phase != string(coordinator.Running) && st.Phase != string(coordinator.Preparing) {
		line += fmt.Sprintf(" once training goes on: %s now", st.Phase)
	}
	return line
}

// formatETA writes seconds as 1h02m, 4m05s or 12s.
func formatETA(sec float64) string {
	d := time.Duration(sec * float64(time.Second)).Round(time.Second)
	h, m, s := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// printProblems shows what makes the coordinator degraded, first thing.
func printProblems(w io.Writer, st *coordinator.Status) {
	for _, p := range st.Problems() {
		fmt.Fprintf(w, "DEGRADED: %s\n", p)
	}
	if st.LedgerLinesLost > 0 {
		fmt.Fprintf(w, "LEDGER INCOMPLETE: %d lines were lost while the ledger file took none\n", st.LedgerLinesLost)
	}
}

func runCheckpoints(ctx context.Context, args []string) error {
	fs := newFlagSet("checkpoints", "[--addr host:port | --state-dir DIR] [--json]",
		"Lists the checkpoints, verifying each one's sha256: asks the running coordinator, or reads the\n"+
			"checkpoint file in --state-dir when no coordinator answers.")
	addr := fs.String("addr", "", "coordinator gRPC address (default: as for status)")
	stateDir := fs.String("state-dir", "nice-state", "folder holding nice.db")
	asJSON := fs.Bool("json", false, "print JSON")
	tlsFlags := creds.AddFlags(fs, false)
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	var list []coordinator.CheckpointInfo
	a := coordinatorAddr(*addr, *stateDir)
	b, err := clientCreds(tlsFlags, *stateDir)
	if err != nil {
		return err
	}
	client, closeConn, err := dialCoordinator(a, b)
	if err != nil {
		return err
	}
	defer closeConn()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, serr := fetchStatus(ctx, client); serr == nil {
		r, err := client.Checkpoints(cctx, &nicepb.CheckpointsRequest{})
		if err != nil {
			return fmt.Errorf("listing checkpoints at %s: %w", a, err)
		}
		if err := json.Unmarshal(r.Json, &list); err != nil {
			return err
		}
	} else {
		path := *stateDir + "/nice.db"
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no coordinator answers at %s and there is no checkpoint file %s; the coordinator: %w", a, path, serr)
		}
		store, err := checkpoint.OpenBolt(path, checkpoint.BoltOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer store.Close()
		l, err := store.List(cctx)
		if err != nil {
			return err
		}
		list = coordinator.ListingInfo(l)
	}
	if *asJSON {
		b, _ := json.Marshal(list)
		fmt.Println(string(b))
		return nil
	}
	if len(list) == 0 {
		fmt.Println("no checkpoints")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tEPOCHS+STEPS\tTIME\tSIZE\tVERIFIED")
	for _, c := range list {
		v := "yes"
		if !c.Verified {
			v = "NO: " + c.Problem
		}
		fmt.Fprintf(tw, "%d\t%d+%d\t%s\t%.1f MB\t%s\n", c.Step, c.Epoch, c.StepInEpoch, c.Time.Local().Format("2006-01-02 15:04:05"), float64(c.Bytes)/1e6, v)
	}
	return tw.Flush()
}
