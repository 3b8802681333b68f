#!/usr/bin/env bash
# The project's test command (see README): formatting, vet, staticcheck, the
# unit and integration tests with and without OpenBLAS, a short run of every
# fuzzer, the race detector on the concurrent packages, and the Docker
# end-to-end test where an engine answers.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n== %s\n' "$*"; }

step "gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "not gofmt-formatted:"; echo "$bad"; exit 1; fi

step "go vet"
go vet ./...

if command -v staticcheck >/dev/null 2>&1 || [ -x "$(go env GOPATH)/bin/staticcheck" ]; then
  step "staticcheck"
  "$(command -v staticcheck || echo "$(go env GOPATH)/bin/staticcheck")" ./...
else
  echo "staticcheck not installed: skipped (go install honnef.co/go/tools/cmd/staticcheck@latest)"
fi

have_openblas=false
if [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a ] || [ -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.a ]; then
  have_openblas=true
fi

if $have_openblas; then
  # The pure-Go build is checked with -short (the real-process cluster tests,
  # which only repeat the protocol more slowly, run in the OpenBLAS pass).
  step "go test -short (pure-Go BLAS)"
  go test -count=1 -short -timeout 20m ./...
  step "go test -tags openblas"
  go test -count=1 -timeout 30m -tags openblas ./...
else
  echo "OpenBLAS not installed: testing the pure-Go build only (apt-get install libopenblas-pthread-dev for the fast one)"
  step "go test (pure-Go BLAS)"
  go test -count=1 -timeout 30m ./...
fi

# Every fuzzer for a few seconds: the decoders and the coordinator's machine
# under inputs no unit test thought of (scripts/fuzz.sh 60 for a longer run).
step "fuzzing (3 s per fuzzer)"
scripts/fuzz.sh 3

race_pkgs=$(go list ./ring/... ./coordinator/... ./worker/... ./internal/membership/... ./internal/statexfer/... ./internal/replay/... 2>/dev/null || true)
if [ -n "$race_pkgs" ]; then
  step "go test -race (concurrent packages)"
  go test -count=1 -race -timeout 20m $race_pkgs
fi

if [ -x test/e2e/compose.sh ]; then
  if docker info >/dev/null 2>&1; then
    step "end-to-end: docker compose"
    test/e2e/compose.sh
    if [ -x test/e2e/campaign.sh ]; then
      # The image compose.sh built; a seeded campaign of random faults,
      # then nice-coord verify replays its ledger (E2E_SEED replays one).
      step "end-to-end: seeded fault campaign"
      E2E_BUILD=none test/e2e/campaign.sh
    fi
    if [ -x test/e2e/swarm.sh ]; then
      # After the compose clusters are down: a one-node swarm, left after.
      step "end-to-end: docker swarm"
      E2E_BUILD=none test/e2e/swarm.sh
    fi
  else
    echo "no Docker engine answers: the compose end-to-end test was skipped"
  fi
fi
echo
echo "all tests passed"
