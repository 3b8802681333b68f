package main

import (
	"flag"
	"fmt"

	"github.com/nice-flow/nice/internal/envflag"
)

// newFlagSet returns a flag set whose help starts with synopsis and describe.
func newFlagSet(name, synopsis, describe string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
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
	return envflag.Apply(fs)
}
