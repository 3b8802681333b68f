package main

import (
	"context"
	"os"

	"github.com/nice-flow/nice/internal/probe"
)

func init() {
	register("probe", command{summary: "ask an HTTP health endpoint (/healthz, /readyz); exit 0 only on 200 (for health checks)",
		run: func(ctx context.Context, args []string) error {
			return probe.Command(ctx, "nice-coord", "http://127.0.0.1:7080/healthz", args, os.Stdout)
		}})
}
