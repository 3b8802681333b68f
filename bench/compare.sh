#!/usr/bin/env bash
# compare.sh: nice against its references on this machine, in one run, alternating.
#
#   bench/compare.sh [--rounds R] [--window S] [--parts step,ring,up]
#
# For each of R rounds (default 2) it runs, back to back:
#   step  BenchmarkTrainStep at 1 and 2 threads, then PyTorch at 1 thread and PyTorch tuned
#         (1 OpenMP + 2 BLAS threads), the same model and batch (bench/pytorch_nice.py)
#   ring  nice-coord bench allreduce at N = 2 and 4 over Unix sockets (its default, as up's
#         workers) and over loopback TCP (it also times raw loopback TCP), then gloo's
#         all-reduce of the same buffer (bench/gloo_allreduce.py)
#   up    nice-coord up --workers 1, 2, 4 (full-size model, batch 256, checkpoints at their
#         default interval) over a window of S seconds (default 60) once 5 steps are in,
#         with the step-time breakdown from the dashboard's history, at N = 2 and 4 also
#         with --local-sockets=false (rings over loopback TCP); then PyTorch DDP on gloo at
#         N = 2 and 4 (bench/pytorch_ddp.py)
#   compose  (not in the default parts) the compose cluster as users run it, 4 workers with
#         the cluster's credentials, over the same window, against up --workers 4 with
#         credentials (--tls-dir) and without; needs Docker and `make images` first
# and prints one line per measurement, then a table of medians and ratios.
#
# Needs: Go, the static OpenBLAS (libopenblas-pthread-dev), PyTorch for python3
# (python3-torch), jq and curl; for compose, Docker, docker-compose and the image
# (`make images`). The machine should be otherwise idle.
set -euo pipefail

rounds=2 window=60 parts=step,ring,up
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift 2 ;;
	--window) window=$2; shift 2 ;;
	--parts) parts=$2; shift 2 ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case $rounds$window in *[!0-9]*) echo "compare.sh: --rounds and --window take whole numbers" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null || { echo "compare.sh: $1 not found: $2" >&2; exit 1; }; }
need go "install Go"
need jq "apt-get install jq"
need curl "apt-get install curl"
# The first python3 on PATH that has PyTorch (a pyenv one may shadow Debian's).
py=
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import torch' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "compare.sh: no python3 here can import torch: apt-get install python3-torch" >&2; exit 1; }
# PyTorch's tensors come from glibc's malloc, which hands large blocks back to the kernel
# when they are freed, so every step faults its activations in again. On these VMs that cost
# PyTorch up to half its speed (267-726 samples/s on one thread within minutes, against
# 763-794 with this). The references run with it, as a user tuning PyTorch would:
# nice is compared with PyTorch at its best.
pyenv=(env MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000)
pyrun() { "${pyenv[@]}" "$py" "$@"; }
# nice's workers and ring members run under SCHED_BATCH (nice-worker --sched-batch), which
# spares the context switches of wake-up preemption; gloo gained more from it than our ring. So
# the multi-process references (gloo, DDP) run under it too: at their best, as above.
batch=()
if command -v chrt >/dev/null && chrt -b 0 true 2>/dev/null; then batch=(chrt -b 0); fi
pybatch() { "${pyenv[@]}" "${batch[@]}" "$py" "$@"; }

work=$(mktemp -d /tmp/nice-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
results=$work/results.tsv
: >"$results"
record() { printf '%s\t%s\n' "$1" "$2" >>"$results"; printf '%-44s %s\n' "$1" "$2"; }

echo "building (openblas) into $work/bin"
(cd "$here" && go build -tags openblas -o "$work/bin/" ./cmd/... && go test -tags openblas -c -o "$work/flow.test" ./flow)

step_part() {
	local out
	out=$(cd "$here/flow" && OPENBLAS_NUM_THREADS=1 GOMAXPROCS=1 "$work/flow.test" -test.run '^$' -test.bench BenchmarkTrainStep -test.benchtime 10x)
	record "step nice 1 thread" "$(awk '/samples\/s/ {for (i = 1; i < NF; i++) if ($(i+1) == "samples/s") print $i}' <<<"$out")"
	out=$(cd "$here/flow" && OPENBLAS_NUM_THREADS=2 GOMAXPROCS=2 "$work/flow.test" -test.run '^$' -test.bench BenchmarkTrainStep -test.benchtime 10x)
	record "step nice 2 threads" "$(awk '/samples\/s/ {for (i = 1; i < NF; i++) if ($(i+1) == "samples/s") print $i}' <<<"$out")"
	out=$(cd "$here/bench" && OPENBLAS_NUM_THREADS=1 pyrun pytorch_nice.py --threads 1)
	record "step pytorch 1 thread" "$(grep -o '[0-9.]* samples/s' <<<"$out" | cut -d' ' -f1)"
	out=$(cd "$here/bench" && OPENBLAS_NUM_THREADS=2 pyrun pytorch_nice.py --threads 1)
	record "step pytorch tuned 2 threads" "$(grep -o '[0-9.]* samples/s' <<<"$out" | cut -d' ' -f1)"
}

ring_part() {
	local n out
	for n in 2 4; do
		out=$("$work/bin/nice-coord" bench allreduce --workers "$n" --floats 19200000 --tcp-mb 512)
		record "ring nice N=$n busbw GB/s" "$(awk '$1 == "median" {print $4}' <<<"$out")"
		record "ring raw TCP N=$n GB/s" "$(awk '/^raw TCP/ {print $(NF-1)}' <<<"$out")"
		out=$("$work/bin/nice-coord" bench allreduce --workers "$n" --floats 19200000 --tcp-mb 64 --local-sockets=false)
		record "ring nice tcp N=$n busbw GB/s" "$(awk '$1 == "median" {print $4}' <<<"$out")"
		out=$(cd "$here/bench" && OPENBLAS_NUM_THREADS=1 pybatch gloo_allreduce.py --workers "$n")
		record "ring gloo N=$n busbw GB/s" "$(grep -o 'busbw [0-9.]*' <<<"$out" | cut -d' ' -f2)"
	done
}

# up_once N: samples/s of nice-coord up --workers N over the window, and the
# mean step-time breakdown (gradient, all-reduce, commit wait, update) of its
# committed steps, as the coordinator's history has them.
up_once() {
	local n=$1 label=${2:-up nice N=$1} dir=$work/up$1
	shift $(($# < 2 ? $# : 2))
	rm -rf "$dir"
	mkdir -p "$dir"
	"$work/bin/nice-coord" up --workers "$n" --state-dir "$dir/state" --listen 127.0.0.1:7400 \
		--http 127.0.0.1:7480 --gossip 127.0.0.1:7446 "$@" >"$dir/up.log" 2>&1 &
	local pid=$!
	status() { "$work/bin/nice-coord" status --state-dir "$dir/state" --json 2>/dev/null || true; }
	alive() { kill -0 "$pid" 2>/dev/null || { echo "compare.sh: $label ended early; its log:" >&2; tail -20 "$dir/up.log" >&2; return 1; }; }
	window_of "$label" status alive http://127.0.0.1:7480
	kill -INT "$pid"
	wait "$pid" || true
}

# window_of LABEL STATUS_FN ALIVE_FN HTTP: waits until 5 steps are in, then
# records samples/s over the window, the generations so far and the mean
# step-time breakdown of the steps committed in the window.
window_of() {
	local label=$1 status=$2 alive=$3 http=$4 st t0 s0 t1 s1 i
	for i in $(seq 1 600); do
		st=$($status)
		if [ -n "$st" ] && [ "$(jq '.step' <<<"$st")" -ge 5 ]; then break; fi
		$alive || return 1
		sleep 1
	done
	t0=$(date +%s.%N) s0=$(jq '.step' <<<"$st")
	sleep "$window"
	st=$($status)
	t1=$(date +%s.%N) s1=$(jq '.step' <<<"$st")
	record "$label samples/s" "$(echo "256 * ($s1 - $s0) / ($t1 - $t0)" | bc -l | xargs printf '%.0f')"
	record "$label generations" "$(jq '.generations' <<<"$st")"
	curl -s "$http/api/history" | jq -r --argjson s0 "$s0" '
		[.points[] | select(.step > $s0)] as $p | ($p | length) as $k
		| if $k == 0 then "no points" else
		  "grad \(([$p[].grad] | add / $k * 1000) | floor) ms, all-reduce \(([$p[].ar] | add / $k * 1000) | floor) ms, commit wait \(([$p[].wait] | add / $k * 1000) | floor) ms, update \(([$p[].upd] | add / $k * 1000) | floor) ms, wall \(([$p[].wall] | add / $k * 1000) | floor) ms" end' |
		while read -r line; do record "$label breakdown" "$line"; done
}

compose_part() {
	local secrets=$work/secrets proj=nicecompare
	[ -d "$secrets" ] || "$work/bin/nice-coord" init --dir "$secrets" --group-readable >/dev/null
	export NICE_SECRETS=$secrets NICE_SECRETS_GID=$(id -g) NICE_GRPC_PORT=7410 NICE_HTTP_PORT=7490
	(cd "$here" && docker-compose -p "$proj" up -d --scale worker=4) >"$work/compose.log" 2>&1 ||
		{ echo "compare.sh: docker-compose up failed (run make images first?):" >&2; tail -20 "$work/compose.log" >&2; return 1; }
	cstatus() { "$work/bin/nice-coord" status --addr 127.0.0.1:7410 --tls-dir "$secrets" --json 2>/dev/null || true; }
	window_of "compose N=4" cstatus true http://127.0.0.1:7490 || true
	(cd "$here" && docker-compose -p "$proj" down -v) >>"$work/compose.log" 2>&1
	up_once 4 "up tls N=4" --tls-dir "$secrets"
	up_once 4 "up nice N=4"
}

up_part() {
	local n out
	up_once 1
	for n in 2 4; do
		up_once "$n"
		up_once "$n" "up tcp N=$n" --local-sockets=false
		out=$(cd "$here/bench" && OPENBLAS_NUM_THREADS=1 pybatch pytorch_ddp.py --workers "$n" --steps 20)
		record "up pytorch DDP N=$n samples/s" "$(grep -o '[0-9.]* samples/s' <<<"$out" | cut -d' ' -f1)"
	done
}

for r in $(seq 1 "$rounds"); do
	echo "== round $r of $rounds ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
	case ,$parts, in *,step,*) step_part ;; esac
	case ,$parts, in *,ring,*) ring_part ;; esac
	case ,$parts, in *,up,*) up_part ;; esac
	case ,$parts, in *,compose,*) compose_part ;; esac
done

echo
echo "== medians over $rounds rounds"
median() { grep -F "$1	" "$results" | cut -f2 | grep . | sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() {
	local a b
	a=$(median "$1") b=$(median "$2")
	if [ "$a" = - ] || [ "$b" = - ]; then echo "-"; else echo "$a / $b" | bc -l | xargs printf '%.2fx'; fi
}
row() { printf '| %s | %s | %s | %s |\n' "$1" "$(median "$2")" "$(median "$3")" "$(ratio "$2" "$3")"; }
echo "| what | nice | reference | ratio |"
echo "|---|---|---|---|"
case ,$parts, in *,step,*)
	row "step, 1 thread (samples/s; PyTorch)" "step nice 1 thread" "step pytorch 1 thread"
	row "step, 2 threads (samples/s; PyTorch tuned)" "step nice 2 threads" "step pytorch tuned 2 threads" ;;
esac
case ,$parts, in *,ring,*)
	for n in 2 4; do
		row "all-reduce N=$n busbw GB/s (gloo)" "ring nice N=$n busbw GB/s" "ring gloo N=$n busbw GB/s"
		row "all-reduce N=$n busbw GB/s (raw TCP)" "ring nice N=$n busbw GB/s" "ring raw TCP N=$n GB/s"
		row "all-reduce N=$n over TCP, busbw GB/s (gloo)" "ring nice tcp N=$n busbw GB/s" "ring gloo N=$n busbw GB/s"
	done ;;
esac
case ,$parts, in *,up,*)
	printf '| up --workers 1 (samples/s) | %s | - | - |\n' "$(median "up nice N=1 samples/s")"
	for n in 2 4; do
		row "up --workers $n (samples/s; DDP gloo)" "up nice N=$n samples/s" "up pytorch DDP N=$n samples/s"
		row "up --workers $n --local-sockets=false (samples/s; DDP gloo)" "up tcp N=$n samples/s" "up pytorch DDP N=$n samples/s"
	done ;;
esac
case ,$parts, in *,compose,*)
	row "compose, 4 workers (samples/s; up --workers 4)" "compose N=4 samples/s" "up nice N=4 samples/s"
	row "compose, 4 workers (samples/s; up --workers 4 --tls-dir)" "compose N=4 samples/s" "up tls N=4 samples/s" ;;
esac
