package membership

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/logbuf"
)

// Gossip with the cluster's key: a node with the same key joins; a node
// with another key, or with none, is refused by the seed (which says why)
// and never becomes a member. Two real memberlist nodes on loopback.
func TestGossipKeyKeepsOthersOut(t *testing.T) {
	ours, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := creds.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	seedLog := &logbuf.Buffer{}
	cfg := loopbackConfig(t, "", nil)
	cfg.Creds = ours
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(seedLog, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	seed := startNode(t, cfg)
	seedAddr := seed.Local().Addr

	for _, c := range []struct {
		name     string
		creds    *creds.Bundle
		seedSays string
	}{
		{"another cluster's key", theirs, "no installed keys could decrypt the message"},
		{"no key", nil, "encryption is configured but remote state is not encrypted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := seedLog.Len()
			jc := loopbackConfig(t, "x", []string{seedAddr})
			jc.Creds = c.creds
			joinerLog := &logbuf.Buffer{}
			jc.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(joinerLog, t.Output()), nil))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			joined := make(chan error, 1)
			go func() {
				g, err := Join(ctx, jc)
				if err == nil {
					g.Shutdown()
				}
				joined <- err
			}()
			waitFor(t, 20*time.Second, "the seed to refuse the joiner", func() bool {
				return strings.Contains(seedLog.From(before), c.seedSays)
			})
			waitFor(t, 20*time.Second, "the joiner to see its attempt fail", func() bool {
				return strings.Contains(joinerLog.From(0), "joining cluster failed")
			})
			cancel()
			if err := <-joined; err == nil {
				t.Fatal("the joiner joined")
			}
			if n := len(seed.Members()); n != 1 {
				t.Fatalf("the seed lists %d members, want only itself: %v", n, seed.Members())
			}
			t.Logf("seed: %s", lineWith(seedLog.From(before), c.seedSays))
			t.Logf("joiner: %s", lineWith(joinerLog.From(0), "joining cluster failed"))
		})
	}

	t.Run("the cluster's key", func(t *testing.T) {
		jc := loopbackConfig(t, "y", []string{seedAddr})
		jc.Creds = ours
		startNode(t, jc)
		seed.waitMembers(t, 2)
	})
}

// lineWith returns the first line of text containing substr.
func lineWith(text, substr string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

// Refusals for a wrong key can be caused by anyone who reaches the port:
// one line per peer host per interval, counting the others.
func TestGossipRefusalsAreRateLimited(t *testing.T) {
	buf := &logbuf.Buffer{}
	limit := &creds.RefusalLimiter{Every: time.Hour}
	l := memberlistLog{log: slog.New(slog.NewTextHandler(buf, nil)), refused: limit}.logger()
	for range 5 {
		l.Printf("[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.9:1234")
	}
	l.Printf("[WARN] memberlist: failed to join 10.0.0.7:7946: remote state is encrypted and encryption is not configured")
	if n := strings.Count(buf.String(), "refused gossip"); n != 2 || !strings.Contains(buf.String(), "10.0.0.7") {
		t.Fatalf("5 refusals of one host and 1 of another logged %d lines, want one per host:\n%s", n, buf)
	}
	if !strings.Contains(buf.String(), "level=WARN") {
		t.Fatalf("refusals are not warnings:\n%s", buf)
	}
	for host, msg := range map[string]string{
		"10.0.0.9":   "failed to receive: no installed keys could decrypt the message from=10.0.0.9:1234",
		"172.19.0.2": "failed to join 172.19.0.2:7946: remote state is encrypted and encryption is not configured",
		"[::1]":      "discarding packet with unacceptable label \"x\": from=[::1]:99",
		"":           "something without an address",
	} {
		if got := peerHost(msg); got != host {
			t.Errorf("peerHost(%q) = %q, want %q", msg, got, host)
		}
	}
}
