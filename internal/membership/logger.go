package membership

import (
	"context"
	"log"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nice-flow/nice/internal/creds"
)

// memberlistLog turns memberlist's *log.Logger output, lines such as
// "[WARN] memberlist: Refuting a suspect message", into slog records.
//
// memberlist logs every step of its failure detector at INFO and ERR: on
// machines whose cores are busy training, a late ack produces "Suspect X has
// failed" and "Failed fallback TCP ping" lines for members that are alive,
// and a clean shutdown produces "use of closed network connection" errors
// from its own closed sockets. Those are routine, so they go to Debug. What
// an operator must see stays visible: a member declared dead (logged by the
// event delegate, with its role and worker id), this node being declared
// dead by others, and anything not recognised as routine, which keeps
// memberlist's own level.
type memberlistLog struct {
	log *slog.Logger
	// onSuspect is told the name in every "Suspect <name> has failed"
	// line: memberlist's prober has just given up on a probe of that
	// member, and this is the only place memberlist says so.
	onSuspect func(name string)
	// quiet is set once this node leaves or shuts down: from then on
	// nothing memberlist says about the network concerns anyone.
	quiet *atomic.Bool
	// refused, if set, limits the lines about packets and streams refused
	// for a wrong key or label (see refusalErrors), per peer host.
	refused *creds.RefusalLimiter
}

// refusalErrors are what memberlist says when it refuses a packet or a
// stream for its key or label: a node of another cluster, or one without
// the key. Anyone who reaches the port can cause them, so they are
// rate-limited.
var refusalErrors = []string{
	"no installed keys could decrypt",
	"encryption is configured but remote state is not encrypted",
	"remote state is encrypted and encryption is not configured",
	"unacceptable label",
}

// refusalPeer finds the peer's address in a refusal message ("... from=IP:port"
// on the refusing side, "failed to join IP:port: ..." on the refused one).
var refusalPeer = regexp.MustCompile(`(?:from=|join )(\S+):\d+`)

// peerHost is the host refusalPeer finds in msg, or "".
func peerHost(msg string) string {
	if m := refusalPeer.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	return ""
}

func (w memberlistLog) logger() *log.Logger { return log.New(w, "", 0) }

func (w memberlistLog) Write(p []byte) (int, error) {
	level, msg := parseMemberlistLine(string(p))
	level = w.classify(level, msg)
	if w.quiet != nil && w.quiet.Load() {
		level = min(level, slog.LevelDebug)
	}
	if w.refused != nil && slices.ContainsFunc(refusalErrors, func(e string) bool { return strings.Contains(msg, e) }) {
		ok, dropped := w.refused.Allow(peerHost(msg), time.Now())
		if !ok {
			return len(p), nil
		}
		w.log.Log(context.Background(), slog.LevelWarn, "refused gossip: the two ends do not share this cluster's gossip key: "+msg,
			"more_refused_from_this_host_since_last_line", dropped)
		return len(p), nil
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

// parseMemberlistLine splits "[LEVEL] memberlist: text" into a level and
// the text. Lines without a level are Info.
func parseMemberlistLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			switch line[1:end] {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(line[end+1:])
		}
	}
	return level, strings.TrimPrefix(line, "memberlist: ")
}

// Prefixes of memberlist messages that are part of normal failure
// detection: each is either followed by a verdict logged elsewhere (a
// death) or by nothing because the member was fine.
var routinePrefixes = []string{
	"Suspect ",                   // a probe went unanswered; State shows it, a death is logged
	"Refuting a suspect message", // this node was late to answer and says it is alive
	"Failed fallback TCP ping",   // the TCP leg of the same probe
	"Marking ",                   // "... as failed": the event delegate logs the death
	"Push/Pull with ",            // periodic sync; retried, and a dead peer is reported anyway
	"Got ping for unexpected",    // a restarted member got its predecessor's probes
	"Was able to connect to ",    // "... over TCP but UDP probes failed": a late UDP ack
	"Failed UDP ping",            // already Debug in memberlist; kept here for clarity
	"Initiating push/pull sync",  // Debug in memberlist
}

// Substrings of errors that mean a peer was slow or went away, or that our
// own socket was closed by Shutdown: failure detection handles the first two
// and the last is expected.
var routineErrors = []string{
	"i/o timeout",
	"use of closed network connection",
	"connection refused",
	"connection reset by peer",
	"broken pipe",
	": EOF",
}

func (w memberlistLog) classify(level slog.Level, msg string) slog.Level {
	if rest, ok := strings.CutPrefix(msg, "Suspect "); ok && w.onSuspect != nil {
		if name, ok := strings.CutSuffix(rest, " has failed, no acks received"); ok {
			w.onSuspect(name)
		}
	}
	if strings.HasPrefix(msg, "Refuting a dead message") {
		// Others declared this node dead: they dropped it, and whatever it
		// was doing with them, until the refutation reaches them.
		return slog.LevelWarn
	}
	for _, p := range routinePrefixes {
		if strings.HasPrefix(msg, p) {
			return slog.LevelDebug
		}
	}
	if level > slog.LevelDebug {
		for _, e := range routineErrors {
			if strings.Contains(msg, e) {
				return slog.LevelDebug
			}
		}
	}
	return level
}
