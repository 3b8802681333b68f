package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/nice-flow/nice/internal/envflag"
	"github.com/nice-flow/nice/internal/logging"
)

// newFlagSet returns a flag set whose help starts with synopsis and describe.
// Every command has --log-format (see logFormat).
func newFlagSet(name, synopsis, describe string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	logging.Flag(fs)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: nice-coord %s %s\n\n%s\n\nFlags (each also settable as NICE_<FLAG> in the environment, e.g. --save-every as NICE_SAVE_EVERY):\n", name, synopsis, describe)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, then fills every flag not given on the command line
// from its NICE_* environment variable. It returns flag.ErrHelp for -h.
func parseFlags(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given, err := envflag.Apply(fs)
	if err != nil {
		return nil, err
	}
	// What logs through the default logger (libraries, commands without a
	// logger of their own) uses the command's format too.
	slog.SetDefault(logging.New(os.Stderr, logFormat(fs), slog.LevelInfo))
	return given, nil
}

// logFormat is the --log-format of a flag set made by newFlagSet.
func logFormat(fs *flag.FlagSet) logging.Format {
	if f := fs.Lookup("log-format"); f != nil {
		if v, ok := f.Value.(*logging.Format); ok {
			return *v
		}
	}
	return logging.Text
}
