package creds

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7000": true, "127.0.0.1:0": true, "[::1]:7000": true, "localhost:7000": true, "127.1.2.3:1": true,
		":7000": false, "0.0.0.0:7000": false, "[::]:7000": false, "10.0.0.5:7000": false, "coordinator:7000": false,
		"7000": false, "": false,
	} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestSelectPolicy(t *testing.T) {
	dir := t.TempDir()
	if _, err := generate(t).Write(dir, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	exposed := []Listener{{"--listen", "127.0.0.1:7000"}, {"--gossip", ":7946"}}
	local := []Listener{{"--listen", "127.0.0.1:7000"}, {"--gossip", "127.0.0.1:7946"}}
	cases := []struct {
		name      string
		f         Flags
		listeners []Listener
		secure    bool
		errHas    string // "" for no error
		logHas    string
	}{
		{"exposed without credentials is refused", Flags{}, exposed, false, `--gossip ":7946" listens beyond this host`, ""},
		{"exposed with --insecure warns", Flags{Insecure: true}, exposed, false, "", "level=WARN msg=\"--insecure"},
		{"exposed with a folder", Flags{Dir: dir}, exposed, true, "", "credentials loaded"},
		{"loopback without credentials says so", Flags{}, local, false, "", "no credentials: gRPC and gossip run in plaintext, on loopback only"},
		{"both flags on a server", Flags{Dir: dir, Insecure: true}, local, false, "choose one", ""},
		{"a client with a folder", Flags{Dir: dir}, nil, true, "", ""},
		{"a client told --insecure ignores the folder", Flags{Dir: dir, Insecure: true}, nil, false, "", ""},
		{"a missing folder", Flags{Dir: dir + "/nope"}, nil, false, "nice-coord init --dir", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			b, err := c.f.Select(slog.New(slog.NewTextHandler(&logs, nil)), c.listeners...)
			if c.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("err = %v, want one saying %q", err, c.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (b != nil) != c.secure {
				t.Errorf("credentials %v, want secure=%v", b != nil, c.secure)
			}
			if !strings.Contains(logs.String(), c.logHas) {
				t.Errorf("log %q does not say %q", logs.String(), c.logHas)
			}
		})
	}
}
