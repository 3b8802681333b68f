// Command nice-coord is the user-facing entry point of nice: it trains a NICE flow
// in one process, samples and scores saved models, benchmarks the ring all-reduce,
// and runs and inspects the distributed trainer.
//
// Each subcommand lives in its own file and registers itself in commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand of nice-coord.
type command struct {
	summary string
	// run gets the arguments after the subcommand name. It returns an error to
	// report on stderr; a usageError also prints the subcommand's help.
	run func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

func register(name string, c command) {
	if _, dup := commands[name]; dup {
		panic("nice-coord: subcommand registered twice: " + name)
	}
	commands[name] = c
}

func usage() {
	fmt.Fprintf(os.Stderr, "nice-coord: train and run NICE normalizing flows on MNIST\n\nUsage:\n  nice-coord <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'nice-coord <command> -h' for the flags of a command.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	c, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "nice-coord: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := c.run(ctx, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "nice-coord %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
