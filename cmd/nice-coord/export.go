package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
)

func init() {
	register("export", command{summary: "write a model (configuration and parameters, no optimiser state) to one file", run: runExport})
}

func runExport(ctx context.Context, args []string) error {
	fs := newFlagSet("export", "[--addr host:port | --state-dir DIR | --state FILE] --out model.nice",
		"Writes the model of a run as one self-describing file: the run's configuration, where training\n"+
			"stood and its scores, and the parameters, without Adam's moments (a quarter of a checkpoint),\n"+
			"with a format header and a sha256. sample, eval and inpaint read it with --state; training cannot\n"+
			"continue from it exactly (the optimiser state is gone), so train and serve refuse it.")
	src := addSourceFlags(fs)
	out := fs.String("out", "model.nice", "file to write")
	force := fs.Bool("force", false, "overwrite --out if it exists")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if _, err := os.Stat(*out); err == nil && !*force {
		return fmt.Errorf("%s exists: pass --force to overwrite it, or choose another --out", *out)
	}
	l, err := src.load(ctx)
	if err != nil {
		return err
	}
	fmt.Println(l.describe())
	if err := l.saved.Model.SaveFile(*out); err != nil {
		return err
	}
	fi, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %d parameters, %.1f MB (read it with --state %s)\n", *out, len(l.saved.Model.Params), float64(fi.Size())/1e6, *out)
	return nil
}
