#!/usr/bin/env bash
# network.sh: training over capped links, as on hosts joined by a real network.
#
#   sudo bench/network.sh [--rates "100mbit 1gbit 10gbit"] [--workers "2 3 4"] [--steps K]
#                         [--hidden H --layers L] [--gradient-wire fp32|bf16] [--results FILE]
#
# Each process (the coordinator and N workers) runs in a network namespace of its own,
# joined to the others through a bridge by a veth pair; tc's token bucket filter (tbf)
# caps every link at the rate in both directions, as a host's network card would. The
# MTU is Ethernet's 1500 bytes. The cluster runs with credentials (mutual TLS), as it
# would across hosts.
#
# For each rate and N it trains the full-size model (batch 256) until K steps (default 4)
# are committed after the first 2, and reads the step-time breakdown of those K steps from
# the coordinator's history: the all-reduce (the ring moving the whole 77 MB gradient,
# 2(N-1)/N of it through each link each way) and the wall time of a step. A member's
# all-reduce time also holds its wait for the slowest member's gradient; the script
# reports the smallest member mean too (the member that waits least), from the workers'
# /metrics.
#
# --gradient-wire bf16 runs the cluster with bfloat16 gradients on the wire (half the
# bytes; S below is then the bytes sent, half the gradient's).
#
# Then it fits the usual model of a ring all-reduce of S bytes,
#   t = 2(N-1)·α + 2(N-1)/N · S/β,
# per rate (α: the time a ring step costs whatever its size; β: the bandwidth the ring
# reaches on that link), prints predicted against measured, and extrapolates to larger
# rings and faster links.
#
# Needs root (namespaces, tc), iproute2, jq, curl, bc, and binaries built with
# `go build -tags openblas -o bin/ ./cmd/...` (NICE_BIN=DIR to use others).
set -euo pipefail

rates="100mbit 1gbit 10gbit" workers="2 3 4" steps=4 extra=() results=""
while [ $# -gt 0 ]; do
	case $1 in
	--rates) rates=$2; shift 2 ;;
	--workers) workers=$2; shift 2 ;;
	--steps) steps=$2; shift 2 ;;
	--hidden | --layers | --gradient-wire) extra+=("$1" "$2"); shift 2 ;;
	--results) results=$2; shift 2 ;;
	-h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "network.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "network.sh: needs root for network namespaces and tc (sudo bench/network.sh)" >&2; exit 1; }
for c in ip tc jq curl bc; do command -v $c >/dev/null || { echo "network.sh: $c not found (apt-get install iproute2 jq curl bc)" >&2; exit 1; }; done
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NICE_BIN:-$here/bin}
[ -x "$bin/nice-coord" ] && [ -x "$bin/nice-worker" ] || { echo "network.sh: no binaries in $bin: go build -tags openblas -o bin/ ./cmd/..." >&2; exit 1; }

work=$(mktemp -d /tmp/nice-network.XXXXXX)
BR=nicenetbr0
PREFIX=nicenet
NET=10.77.0
pids=()

teardown() {
	local p
	for p in ${pids[@]+"${pids[@]}"}; do kill -INT "$p" 2>/dev/null || true; done
	for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
	pids=()
	# The host's ends of the veth pairs first: a namespace's end (and so the
	# pair) may outlive ip netns del for a moment.
	for p in $(ip -o link show master "$BR" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$p" 2>/dev/null || true; done
	for p in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do ip netns del "$p"; done
	ip link del "$BR" 2>/dev/null || true
	while command -v iptables >/dev/null && iptables -D FORWARD -i "$BR" -o "$BR" -j ACCEPT 2>/dev/null; do :; done
}
trap 'teardown; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# burst: the bucket holds 4 ms of traffic at the rate (at least 64 KiB), so that a
# 250 Hz timer can keep the rate; the queue holds 50 ms.
burst_of() {
	local bits
	bits=$(tc_bits "$1")
	echo $((bits / 8 / 250 > 65536 ? bits / 8 / 250 : 65536))
}
tc_bits() {
	case $1 in
	*gbit) echo $((${1%gbit} * 1000000000)) ;;
	*mbit) echo $((${1%mbit} * 1000000)) ;;
	*) echo "network.sh: rate $1: write it as Nmbit or Ngbit" >&2; exit 2 ;;
	esac
}

# host NAME IP RATE: a namespace with one veth into the bridge, capped both ways.
host() {
	local name=$PREFIX-$1 ip=$2 rate=$3 burst
	burst=$(burst_of "$rate")
	ip netns add "$name"
	ip link add "v$1" type veth peer name eth0 netns "$name"
	ip link set "v$1" master "$BR" up
	ip -n "$name" link set lo up
	ip -n "$name" addr add "$ip/24" dev eth0
	ip -n "$name" link set eth0 up
	tc qdisc add dev "v$1" root tbf rate "$rate" burst "$burst" latency 50ms
	ip netns exec "$name" tc qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
}

"$bin/nice-coord" init --dir "$work/secrets" >/dev/null
# One line per run: rate, N, mean all-reduce, step and gradient seconds, and the
# least-waiting member's all-reduce. --results FILE appends to FILE and fits all of it.
if [ -z "$results" ]; then
	results=$work/results.tsv
	: >"$results"
fi

# run RATE N: a coordinator and N workers on capped links; records the mean
# all-reduce and step time of K steps after the first 2.
run() {
	local rate=$1 n=$2 k st s
	teardown
	ip link add "$BR" type bridge
	ip link set "$BR" up
	# Where br_netfilter is loaded, bridged frames cross the host's iptables,
	# whose FORWARD policy Docker sets to DROP: one rule lets this bridge's
	# own traffic through, and teardown removes it.
	if command -v iptables >/dev/null && ! iptables -C FORWARD -i "$BR" -o "$BR" -j ACCEPT 2>/dev/null; then
		iptables -I FORWARD 1 -i "$BR" -o "$BR" -j ACCEPT
	fi
	host c "$NET.1" "$rate"
	for k in $(seq 1 "$n"); do host "w$k" "$NET.$((10 + k))" "$rate"; done
	local state=$work/state-$rate-$n
	ip netns exec "$PREFIX-c" "$bin/nice-coord" serve --listen "$NET.1:7000" --http "$NET.1:7080" \
		--gossip "$NET.1:7946" --state-dir "$state" --tls-dir "$work/secrets" --max-steps $((steps + 2)) \
		${extra[@]+"${extra[@]}"} >"$work/coord-$rate-$n.log" 2>&1 &
	pids+=($!)
	for k in $(seq 1 "$n"); do
		ip netns exec "$PREFIX-w$k" env GOMAXPROCS=1 OPENBLAS_NUM_THREADS=1 "$bin/nice-worker" --id "w$k" \
			--coordinator "$NET.1:7000" --join "$NET.1:7946" --listen "$NET.$((10 + k)):7100" \
			--gossip "$NET.$((10 + k)):7947" --http "$NET.$((10 + k)):7081" --tls-dir "$work/secrets" \
			>"$work/w$k-$rate-$n.log" 2>&1 &
		pids+=($!)
	done
	status() { ip netns exec "$PREFIX-c" "$bin/nice-coord" status --addr "$NET.1:7000" --tls-dir "$work/secrets" --json 2>/dev/null || true; }
	# ar_sums: each worker's all-reduce seconds and count so far, from its /metrics.
	ar_sums() {
		local k
		for k in $(seq 1 "$n"); do
			ip netns exec "$PREFIX-w$k" curl -s "http://$NET.$((10 + k)):7081/metrics" |
				awk -v w="$k" '/^nice_worker_allreduce_duration_seconds_sum/ {s = $2} /^nice_worker_allreduce_duration_seconds_count/ {c = $2} END {print w, s + 0, c + 0}'
		done
	}
	local deadline=$((SECONDS + 900)) before=""
	while :; do
		st=$(status)
		if [ -n "$st" ] && [ -z "$before" ] && (($(jq -r .step <<<"$st") >= 2)); then before=$(ar_sums); fi
		if [ -n "$st" ] && [ "$(jq -r .phase <<<"$st")" = holding ]; then break; fi
		((SECONDS < deadline)) || { echo "network.sh: $rate N=$n did not reach step $((steps + 2)) in 15 min; logs in $work" >&2; exit 1; }
		sleep 1
	done
	s=$(ip netns exec "$PREFIX-c" curl -s "http://$NET.1:7080/api/history" | jq -r --argjson k "$steps" '
		[.points[] | select(.step > 2)] as $p | ($p | length) as $m
		| if $m < $k then "" else
		  "\([$p[].ar] | add / $m)\t\([$p[].wall] | add / $m)\t\([$p[].grad] | add / $m)" end')
	[ -n "$s" ] || { echo "network.sh: $rate N=$n: the history has fewer than $steps steps after step 2" >&2; exit 1; }
	# The member that waits least for the others' gradients: the smallest mean
	# all-reduce over the workers, over the same steps.
	local best
	best=$(join <(sort <<<"$before") <(ar_sums | sort) | awk '$5 > $3 {m = ($4 - $2) / ($5 - $3); if (best == "" || m < best) best = m} END {print best}')
	printf '%s\t%s\t%s\t%s\n' "$rate" "$n" "$s" "$best" >>"$results"
	printf '%-8s N=%s  all-reduce %.3f s (least-waiting member %.3f s)  step %.3f s  gradient %.3f s\n' \
		"$rate" "$n" "$(cut -f1 <<<"$s")" "${best:-0}" "$(cut -f2 <<<"$s")" "$(cut -f3 <<<"$s")"
}

echo "each process in its own namespace, links capped with tbf; credentials on; logs in $work"
for rate in $rates; do
	for n in $workers; do run "$rate" "$n"; done
done
teardown

# Fit per rate: t = a·x1 + b·x2 with x1 = 2(N-1), x2 = 2(N-1)/N·S, a = α, b = 1/β,
# on the least-waiting member's all-reduce time (least squares, 2x2 normal equations).
# S: the gradient's bytes, from the model's shape (4 couplings of L hidden layers of
# width H between 392 and 392 dimensions, and the 784 scales).
H=1000 L=5
for ((i = 0; i < ${#extra[@]}; i += 2)); do
	case ${extra[i]} in --hidden) H=${extra[i + 1]} ;; --layers) L=${extra[i + 1]} ;; --gradient-wire) W=${extra[i + 1]} ;; esac
done
S=$(((4 * (392 * H + H + (L - 1) * (H * H + H) + H * 392 + 392) + 784) * 4))
[ "${W:-fp32}" != bf16 ] || S=$((S / 2))
echo
echo "model t = 2(N-1)·α + 2(N-1)/N · S/β, S = $S bytes (the whole gradient, as sent: ${W:-fp32})"
echo "| link | α | β | N | measured | predicted |"
echo "|---|---|---|---|---|---|"
: >"$work/fit.tsv"
for rate in $(cut -f1 "$results" | sort -u); do
	awk -F'\t' -v r="$rate" -v S="$S" -v link="$(tc_bits "$rate")" '
		$1 == r && $6 != "" { n = $2; t = $6; x1 = 2 * (n - 1); x2 = 2 * (n - 1) / n * S
			a11 += x1 * x1; a12 += x1 * x2; a22 += x2 * x2; b1 += x1 * t; b2 += x2 * t; N[++k] = n; T[k] = t }
		END {
			det = a11 * a22 - a12 * a12
			if (k < 2 || det == 0) { printf "| %s | need 2 sizes to fit | | | | |\n", r; exit }
			a = (b1 * a22 - b2 * a12) / det; b = (a11 * b2 - a12 * b1) / det
			if (b <= 0 || 1 / b > link / 8) {
				# Time grows with N faster than the bytes do: not the link but the
				# CPU (every member shares the cores of this machine) sets the pace.
				for (i = 1; i <= k; i++) printf "| %s | – | CPU-bound here | %d | %.3f s | – |\n", r, N[i], T[i]
				exit
			}
			for (i = 1; i <= k; i++) {
				p = 2 * (N[i] - 1) * a + 2 * (N[i] - 1) / N[i] * S * b
				printf "| %s | %.1f ms | %.0f MB/s (%.0f%% of the link) | %d | %.3f s | %.3f s |\n", r, a * 1000, 1 / b / 1e6, 100 / b / (link / 8), N[i], T[i], p
			}
			printf "%s\t%.6f\t%.9g\t%.4f\n", r, a, 1 / b, 8 / b / link >> "'"$work/fit.tsv"'"
		}' "$results"
done

# Extrapolation: the fit of the fastest link that the network, not the CPU, paced,
# gives α and the fraction of a link the ring reaches; on faster links the ring is
# also capped by what one member's CPU moves (the N = 2 run on the fastest link
# measured here, a lower bound: there 2 members share this machine's cores).
best=$(sort -t$'\t' -k3 -g "$work/fit.tsv" | tail -n 1)
fast=$(cut -f1 "$results" | sort -u | while read -r r; do echo "$(tc_bits "$r") $r"; done | sort -n | tail -n 1 | cut -d' ' -f2)
cpu=$(awk -F'\t' -v r="$fast" -v S="$S" -v a="$(cut -f2 <<<"$best")" '$1 == r && $2 == 2 && $6 != "" {print S / ($6 - 2 * a); exit}' "$results")
if [ -n "$best" ] && [ -n "$cpu" ]; then
	echo
	echo "extrapolated ring time for the whole gradient: α $(cut -f2 <<<"$best") s and $(cut -f4 <<<"$best" | awk '{printf "%.0f%%", $1 * 100}') of the link (from $(cut -f1 <<<"$best")), at most $(awk -v c="$cpu" 'BEGIN {printf "%.2f GB/s", c / 1e9}') per link (CPU, from $fast N=2)"
	echo "| link | N = 8 | N = 32 | N = 128 |"
	echo "|---|---|---|---|"
	for link in 10gbit 100gbit; do
		awk -v a="$(cut -f2 <<<"$best")" -v e="$(cut -f4 <<<"$best")" -v L="$(tc_bits "$link")" -v c="$cpu" -v S="$S" -v name="$link" 'BEGIN {
			bw = e * L / 8; if (bw > c) bw = c
			printf "| %s (%.2f GB/s) |", name, bw / 1e9
			split("8 32 128", ns, " ")
			for (i = 1; i <= 3; i++) { n = ns[i]; lat = 2 * (n - 1) * a; printf " %.3f s (latency %.3f s) |", lat + 2 * (n - 1) / n * S / bw, lat }
			printf "\n" }'
	done
fi
