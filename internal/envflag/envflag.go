// Package envflag lets every command-line flag also be set from the
// environment: --save-every from NICE_SAVE_EVERY. A flag given on the command
// line wins over its variable.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// Name is the environment variable that sets flag name.
func Name(name string) string {
	return "NICE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Apply fills every flag of fs (already parsed) that was not given on the
// command line from its variable, and returns the flags set either way.
func Apply(fs *flag.FlagSet) (map[string]bool, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := Name(f.Name)
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
