#!/usr/bin/env bash
# Runs every Go fuzzer of the repository for a bounded time each, and prints
# each one's executions and executions per second.
#
#   scripts/fuzz.sh [seconds]    (default 5 seconds per fuzzer)
#
# The fuzzers are found with `go test -list '^Fuzz'` in the packages whose
# tests define one. A fuzzer that fails leaves its input in the package's
# testdata/fuzz/<Fuzzer>/ (rerun it with `go test -run <Fuzzer>/<file>`);
# the script goes on with the others and exits 1 at the end.
#
# Each run starts from the seeds and testdata/fuzz inputs alone, in a fresh
# corpus folder, so that every fuzzer spends its time fuzzing (a corpus kept
# from earlier runs is replayed first, which can take longer than a short
# run). Environment: FUZZ_CORPUS, a folder, keeps the corpus between runs
# instead; FUZZ_PARALLEL sets the fuzzing processes per fuzzer (default:
# GOMAXPROCS); FUZZ_ONLY, a regular expression, keeps only matching fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-5}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds per fuzzer, a positive integer]" >&2
  exit 2
fi
parallel=()
if [ -n "${FUZZ_PARALLEL:-}" ]; then parallel=(-parallel "$FUZZ_PARALLEL"); fi

# Packages whose tests define a fuzzer; `go test -list` names them.
mapfile -t dirs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u)
if [ ${#dirs[@]} -eq 0 ]; then
  echo "no fuzzers found"
  exit 0
fi

failed=()
total=0
log=$(mktemp)
corpus=${FUZZ_CORPUS:-$(mktemp -d)}
trap 'rm -f "$log"; [ -n "${FUZZ_CORPUS:-}" ] || rm -rf "$corpus"' EXIT
for dir in "${dirs[@]}"; do
  mapfile -t names < <(go test -list '^Fuzz' "$dir" | grep '^Fuzz' || true)
  for name in "${names[@]}"; do
    if [ -n "${FUZZ_ONLY:-}" ] && ! [[ $name =~ $FUZZ_ONLY ]]; then continue; fi
    total=$((total + 1))
    fuzz() {
      go test -run '^$' -fuzz "^${name}\$" -fuzztime "${secs}s" -fuzzminimizetime "${secs}s" "${parallel[@]}" "$dir" \
        -test.fuzzcachedir="$corpus" >"$log" 2>&1
    }
    # Go 1.26's fuzzing coordinator can fail a target at the -fuzztime
    # deadline with a bare "context deadline exceeded" and no input written
    # (golang/go#75804, fixed in Go 1.27): such a run found nothing, so it is
    # run once more; a failure that writes an input is never retried.
    harness_race() { grep -q '^[[:space:]]*context deadline exceeded$' "$log" && ! grep -q 'Failing input written to' "$log"; }
    if fuzz || { harness_race && echo "$name: the fuzzing coordinator's deadline race (no input written); running it again" && fuzz; }; then
      verdict=ok
    else
      verdict=FAILED
      failed+=("$name ($dir)")
    fi
    # The last progress line carries the total executions (none when an
    # input of the corpus fails while the baseline is gathered).
    execs=$(grep -o 'execs: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || true)
    execs=${execs:-0}
    if [ "$verdict" = ok ]; then
      printf '%-26s %-24s %10d execs in %ss  %8d execs/s  ok\n' "$name" "$dir" "$execs" "$secs" $((execs / secs))
    else
      after=$(grep -o -m1 -- "--- FAIL: $name ([0-9.]*s)" "$log" | grep -o '([0-9.]*s)' | tr -d '()' || echo '?')
      printf '%-26s %-24s %10d execs, FAILED after %s\n' "$name" "$dir" "$execs" "$after"
      grep -v '^fuzz: elapsed' "$log" | head -n 60 | sed 's/^/    /'
    fi
  done
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "${#failed[@]} of $total fuzzers failed: ${failed[*]}"
  exit 1
fi
echo "all $total fuzzers passed"
