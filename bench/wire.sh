#!/usr/bin/env bash
# wire.sh: float32 against bfloat16 gradients on the wire, from the same seed.
#
#   bench/wire.sh [--workers N] [--epochs E] [-- extra flags for nice-coord up]
#
# Trains the same run twice with `nice-coord up` on this machine (loopback), once with
# --gradient-wire fp32 and once with bf16, and prints for each the test log-likelihood of
# every epoch, the mean time between commits (steps after the first 5), and what
# `nice-coord verify` says of the run (its checkpoints against its ledger replayed in one
# process). The log-likelihoods are those of the same runs on any link: the numbers a
# step computes do not depend on the network, only its time does (bench/network.sh
# --gradient-wire measures that on capped links).
#
# Needs jq and binaries built with `go build -tags openblas -o bin/ ./cmd/...`
# (NICE_BIN=DIR to use others). Defaults: 4 workers, 2 epochs, the full-size model.
set -euo pipefail

workers=4 epochs=2 extra=()
while [ $# -gt 0 ]; do
	case $1 in
	--workers) workers=$2; shift 2 ;;
	--epochs) epochs=$2; shift 2 ;;
	--) shift; extra=("$@"); break ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "wire.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
command -v jq >/dev/null || { echo "wire.sh: jq not found (apt-get install jq)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NICE_BIN:-$here/bin}
[ -x "$bin/nice-coord" ] && [ -x "$bin/nice-worker" ] || { echo "wire.sh: no binaries in $bin: go build -tags openblas -o bin/ ./cmd/..." >&2; exit 1; }
work=$(mktemp -d /tmp/nice-wire.XXXXXX)
echo "runs in $work: $workers workers, $epochs epochs, ${extra[*]:-the default model}"

rows=()
for wire in fp32 bf16; do
	dir=$work/$wire
	mkdir -p "$dir"
	t0=$SECONDS
	(cd "$dir" && "$bin/nice-coord" up --workers "$workers" --epochs "$epochs" --gradient-wire "$wire" \
		${extra[@]+"${extra[@]}"} >up.log 2>&1) || { echo "wire.sh: $wire: nice-coord up failed; see $dir/up.log" >&2; exit 1; }
	scores=$(jq -r '[.epochs[] | "\(.epoch): \(.test_ll)"] | join(", ")' "$dir/nice-state/scores.json")
	step=$(jq -s '[.[].unix_nano] | sort | .[5:] as $t | if ($t | length) < 2 then 0 else (($t[-1] - $t[0]) / (($t | length) - 1) / 1e9) end' "$dir/nice-state/ledger.jsonl")
	verdict=$("$bin/nice-coord" verify --state-dir "$dir/nice-state" 2>&1 | tail -n 1)
	echo "$wire: test log-likelihood by epoch ${scores}; $(printf '%.3f' "$step") s a step; $((SECONDS - t0)) s in all"
	echo "  verify: $verdict"
	rows+=("| $wire | $scores | $(printf '%.3f' "$step") s |")
done
echo
echo "| gradient wire | test log-likelihood (nats) by epoch | time a step |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
