package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
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

// envName is the environment variable that sets flag name.
func envName(name string) string {
	return "NICE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
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
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := envName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
				return
			}
			given[f.Name] = true
		}
	})
	return given, errors.Join(errs...)
}
