package creds

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
)

// Flags are a command's --tls-dir and --insecure.
type Flags struct {
	Dir      string
	Insecure bool
}

// AddFlags registers --tls-dir and --insecure on fs. server says whether
// the command listens (serve, nice-worker) or only dials (status).
func AddFlags(fs *flag.FlagSet, server bool) *Flags {
	f := &Flags{}
	fs.StringVar(&f.Dir, "tls-dir", "", "folder of the cluster's credentials written by `nice-coord init` "+
		"(mutual TLS for gRPC, encrypted gossip)")
	if server {
		fs.BoolVar(&f.Insecure, "insecure", false, "run without credentials on a non-loopback address: "+
			"plaintext gRPC and unencrypted gossip that anyone who reaches the ports can join (trusted networks only)")
	} else {
		fs.BoolVar(&f.Insecure, "insecure", false, "talk plaintext to a cluster that runs without credentials, "+
			"even when --tls-dir (or its environment variable) names a folder")
	}
	return f
}

// Listener is an address a command listens on, and the flag that set it.
type Listener struct {
	Flag, Addr string
}

// Select applies the policy: with a folder, its credentials; with
// --insecure, none (logged as a warning, at every start); with neither,
// none if every listener is on loopback (logged), and an error naming the
// first listener that is not otherwise. A command that only dials passes
// no listeners.
func (f Flags) Select(log *slog.Logger, listeners ...Listener) (*Bundle, error) {
	if log == nil {
		log = slog.Default()
	}
	if f.Dir != "" && f.Insecure && len(listeners) > 0 {
		return nil, errors.New("--tls-dir and --insecure were both given: choose one (--insecure runs without credentials)")
	}
	if f.Insecure {
		if len(listeners) > 0 {
			log.Warn("--insecure: no credentials; gRPC is plaintext and gossip unencrypted, so anyone who reaches these "+
				"ports can join the cluster, read its state and disturb training (create credentials with `nice-coord init`)",
				"listeners", describe(listeners))
		}
		return nil, nil
	}
	if f.Dir != "" {
		b, err := Load(f.Dir)
		if err != nil {
			return nil, fmt.Errorf("--tls-dir: %w", err)
		}
		if len(listeners) > 0 {
			log.Info("credentials loaded: mutual TLS for gRPC, encrypted gossip", "dir", f.Dir, "ca", b.Fingerprint(),
				"expires", b.NotAfter().Format("2006-01-02"))
		}
		return b, nil
	}
	for _, l := range listeners {
		if !Loopback(l.Addr) {
			return nil, fmt.Errorf("%s %q listens beyond this host and no credentials were given: create them with "+
				"`nice-coord init --dir DIR` and pass --tls-dir DIR (or set NICE_TLS_DIR), or listen on 127.0.0.1, "+
				"or pass --insecure to run in plaintext on a network you trust", l.Flag, l.Addr)
		}
	}
	if len(listeners) > 0 {
		log.Info("no credentials: gRPC and gossip run in plaintext, on loopback only (pass --tls-dir to use credentials)",
			"listeners", describe(listeners))
	}
	return nil, nil
}

func describe(ls []Listener) string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.Flag + "=" + l.Addr
	}
	return strings.Join(parts, " ")
}

// Loopback reports whether the listen address addr (host:port) accepts
// connections from this host only: a loopback IP or "localhost". An empty
// host, 0.0.0.0, ::, any other IP or any other name is not (a name is not
// resolved: it may point elsewhere later).
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
