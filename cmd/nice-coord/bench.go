package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/ring"
)

func init() {
	register("bench", command{summary: "benchmark the ring all-reduce between processes on loopback", run: runBench})
}

// memberMode is the hidden bench subcommand a benchmark re-executes this
// binary with, once per ring member.
const memberMode = "allreduce-member"

func runBench(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(os.Stderr, "Usage: nice-coord bench <benchmark> [flags]\n\nBenchmarks:\n  allreduce   time the ring all-reduce of N member processes over gRPC on loopback\n")
		if len(args) == 0 {
			return fmt.Errorf("bench: which benchmark? (allreduce)")
		}
		return nil
	}
	switch args[0] {
	case "allreduce":
		return runBenchAllReduce(ctx, args[1:])
	case memberMode:
		tuning := ring.DefaultGRPCTuning()
		if len(args) > 1 {
			if err := json.Unmarshal([]byte(args[1]), &tuning); err != nil {
				return fmt.Errorf("bench member: reading the gRPC tuning: %w", err)
			}
		}
		var b *creds.Bundle
		if len(args) > 2 {
			var err error
			if b, err = creds.Load(args[2]); err != nil {
				return fmt.Errorf("bench member: %w", err)
			}
		}
		return runBenchMember(ctx, tuning, b, os.Stdin, os.Stdout)
	}
	return fmt.Errorf("bench: unknown benchmark %q (allreduce)", args[0])
}
