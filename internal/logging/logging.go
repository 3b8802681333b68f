// Package logging builds the loggers of nice-coord and nice-worker: text
// (logfmt-like key=value lines) for a person at a terminal, or JSON, one
// object per line, for a log collector. Every command takes --log-format
// (or NICE_LOG_FORMAT) through Flag.
//
// Levels follow one rule across the project: info is what a person
// watching a run wants to see (start, generation changes, members joined
// and lost, epoch scores, stops), debug is routine detail (each
// checkpoint stored, each state transfer), and warnings and errors are
// things that went wrong.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// Format is how log records are written.
type Format string

// The formats.
const (
	Text Format = "text" // key=value lines (slog.TextHandler)
	JSON Format = "json" // one JSON object per line (slog.JSONHandler)
)

// String implements flag.Value.
func (f *Format) String() string {
	if f == nil || *f == "" {
		return string(Text)
	}
	return string(*f)
}

// Set implements flag.Value: it accepts "text" or "json".
func (f *Format) Set(s string) error {
	switch Format(s) {
	case Text, JSON:
		*f = Format(s)
		return nil
	}
	return fmt.Errorf("log format %q: want text or json", s)
}

// Flag registers --log-format on fs and returns its value (Text unless set).
func Flag(fs *flag.FlagSet) *Format {
	f := new(Format)
	*f = Text
	fs.Var(f, "log-format", "log format: text (key=value lines) or json (one JSON object per line)")
	return f
}

// New returns a logger writing records at level and above to w in format f
// (the zero Format is Text).
func New(w io.Writer, f Format, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if f == JSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Level is slog.LevelDebug when verbose, else slog.LevelInfo.
func Level(verbose bool) slog.Level {
	if verbose {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
