#!/usr/bin/env bash
# recovery.sh: how fast the compose cluster gets going again after a fault,
# measured at seeded random moments.
#
# It brings up docker-compose.yml (its own project name and host ports) with one
# coordinator and 4 workers training a model of hidden 256 x 2 layers per
# coupling (about 10 steps/s on two cores), and times E2E_RUNS faults of each kind:
#
#   worker-kill       a worker SIGKILLed (docker kill); afterwards the service is
#                     scaled back to 4 before the next fault
#   worker-freeze     a worker frozen for E2E_FREEZE seconds (docker pause, then
#                     docker unpause)
#   coordinator-kill  the coordinator SIGKILLed (docker kill) and started again at
#                     once (docker wait, docker start); timed from the kill and,
#                     reported as coordinator-start, from the new process's start
#                     (the gap between the two is docker's own: seconds on a
#                     busy machine)
#
# What is timed: a fault hits when S steps are committed; the cluster has
# recovered when step S+2 is committed (status "step" >= S+2: the step in flight
# redone and one more). Both instants come from records, not from polling: the
# commit from the coordinator's ledger (ledger.jsonl in its state folder, which
# holds each commit's time), the fault from docker's kill or pause event for the
# container (logged once the signal is delivered or the container frozen; the
# container's FinishedAt comes only once the engine has processed the exit,
# tenths of a second later on a busy machine), the new coordinator's start from
# its StartedAt. Where the ledger has no record, the time status first showed
# the step is used instead, and the line says so.
#
# Before each fault the script waits for 4 workers training with agreeing digests
# and E2E_PROGRESS new steps; then it waits a seeded random time (E2E_GAP_MIN to
# E2E_GAP_MAX seconds) so faults land at random points of a step, and picks the
# victim's rank at random. The seed is printed; E2E_SEED replays the same choices
# (the same waits and ranks: the cluster's own timing still varies).
#
# It prints every measurement, the median and max of each kind, and as its last
# line one JSON object with all the figures. It leaves nothing running (down -v).
# Where no Docker engine answers, it says so and exits 0 without running anything.
#
# Settings (environment):
#   E2E_RUNS        faults of each kind (default 10)
#   E2E_FAULTS      kinds, run as blocks in this order
#                   (default "worker-kill worker-freeze coordinator-kill")
#   E2E_SEED        seed of the random moments and victims (default: from the clock)
#   E2E_FREEZE      seconds a frozen worker stays frozen (default 8)
#   E2E_GAP_MIN, E2E_GAP_MAX
#                   the random wait before each fault, in seconds (default 1, 6)
#   E2E_BUILD       make (default: `make images`), compose (the multi-stage
#                   Dockerfile: needs the Go image), none (use $NICE_IMAGE as it is)
#   NICE_IMAGE      image to run (default nice:local)
#   E2E_COMPOSE     compose command (default: `docker compose` if present, else docker-compose)
#   E2E_WAIT        seconds allowed for each wait (default 120); a fault not
#                   recovered from within it is reported as a timeout
#   E2E_PROGRESS    new steps that make the cluster count as going (default 3)
#   E2E_HIDDEN, E2E_LAYERS, E2E_BATCH, E2E_EPOCHS
#                   the training run (defaults 256, 2, 256, 1000)
#   E2E_CHECKPOINT_EVERY
#                   --checkpoint-every (default: the coordinator's own default)
#   E2E_COORD_FLAGS, E2E_WORKER_FLAGS
#                   extra flags for `nice-coord serve` and `nice-worker`, split on spaces
#   NICE_GRPC_PORT, NICE_HTTP_PORT
#                   host ports (default: the first free ones from 17300 and 17380)
#   E2E_ALLOW_OTHERS=1  run even while containers of another compose project run
#                   (by default it refuses: they would share the cores and skew the times)
#   E2E_KEEP=1      leave the cluster running at the end (default: down -v)
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
NAME=test/e2e/recovery.sh

E2E_RUNS=${E2E_RUNS:-10}
E2E_FAULTS=${E2E_FAULTS:-worker-kill worker-freeze coordinator-kill}
E2E_FREEZE=${E2E_FREEZE:-8}
E2E_GAP_MIN=${E2E_GAP_MIN:-1}
E2E_GAP_MAX=${E2E_GAP_MAX:-6}
E2E_BUILD=${E2E_BUILD:-make}
NICE_IMAGE=${NICE_IMAGE:-nice:local}
E2E_WAIT=${E2E_WAIT:-120}
E2E_PROGRESS=${E2E_PROGRESS:-3}
E2E_HIDDEN=${E2E_HIDDEN:-256}
E2E_LAYERS=${E2E_LAYERS:-2}
E2E_BATCH=${E2E_BATCH:-256}
E2E_EPOCHS=${E2E_EPOCHS:-1000}
E2E_CHECKPOINT_EVERY=${E2E_CHECKPOINT_EVERY:-}
E2E_COORD_FLAGS=${E2E_COORD_FLAGS:-}
E2E_WORKER_FLAGS=${E2E_WORKER_FLAGS:-}
E2E_ALLOW_OTHERS=${E2E_ALLOW_OTHERS:-0}
E2E_KEEP=${E2E_KEEP:-0}
WORKERS=4
POLL=0.2
STATE_DIR=/var/lib/nice

log() { printf '[recovery %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------
# Where there is nothing to measure, say so plainly.

if ! command -v docker >/dev/null 2>&1; then
	echo "SKIPPED $NAME: no docker command on this machine, so the recovery measurements did not run."
	exit 0
fi
if ! timeout 20 docker info >/dev/null 2>&1; then
	echo "SKIPPED $NAME: no Docker engine answers here (docker info failed), so the recovery measurements did not run."
	exit 0
fi

die() {
	echo "FAIL $NAME: $*" >&2
	exit 1
}

command -v jq >/dev/null 2>&1 || die "jq is needed to read the status JSON; install it (apt-get install jq)"
for k in $E2E_FAULTS; do
	case $k in
	worker-kill | worker-freeze | coordinator-kill) ;;
	*) die "E2E_FAULTS: unknown fault kind '$k' (want worker-kill, worker-freeze, coordinator-kill)" ;;
	esac
done

if [ -n "${E2E_COMPOSE:-}" ]; then
	read -r -a COMPOSE <<<"$E2E_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
	COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
	COMPOSE=(docker-compose)
else
	die "a Docker engine answers but there is no compose tool (neither 'docker compose' nor docker-compose)"
fi

# Letters and digits only: compose v2 and docker-compose 1.29 read it the same.
PROJECT=${E2E_PROJECT:-nicerecovery$$}
others=$(docker ps --format '{{.Label "com.docker.compose.project"}}' | sort -u | grep -v -x -e '' -e "$PROJECT" || true)
if [ -n "$others" ] && [ "$E2E_ALLOW_OTHERS" != 1 ]; then
	die "containers of other compose projects are running ($(echo "$others" | tr '\n' ' ')): they would share the cores and skew the times; stop them, or set E2E_ALLOW_OTHERS=1"
fi

WORKDIR=$(mktemp -d)
OVERRIDE=$WORKDIR/docker-compose.recovery.yml
LEDGER=$WORKDIR/ledger.jsonl
STATUS_BIN=$WORKDIR/nice-coord
LAST_STATUS=""
UNPAUSE_PID=""

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" "$@"; }

# Containers are found by compose's labels, which v2 and 1.29 both set.
containers() { # service [extra docker ps flags...]
	local svc=$1
	shift
	docker ps -q --no-trunc \
		--filter "label=com.docker.compose.project=$PROJECT" \
		--filter "label=com.docker.compose.service=$svc" "$@"
}
container_of_worker() { # worker id (the container's hostname)
	local c
	for c in $(containers worker -a); do
		if [ "$(docker inspect -f '{{.Config.Hostname}}' "$c")" = "$1" ]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$UNPAUSE_PID" ]; then
		kill "$UNPAUSE_PID" 2>/dev/null || true
		wait "$UNPAUSE_PID" 2>/dev/null || true
	fi
	local c
	for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter status=paused); do
		docker unpause "$c" >/dev/null 2>&1 || true
	done
	if [ "$E2E_KEEP" = 1 ]; then
		log "E2E_KEEP=1: leaving project $PROJECT up (remove it with: ${COMPOSE[*]} -p $PROJECT -f docker-compose.yml -f $OVERRIDE down -v)"
	else
		dc down -v --remove-orphans >/dev/null 2>&1 || true
		rm -rf "$WORKDIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

fail() {
	echo >&2
	echo "FAIL $NAME: $*" >&2
	if [ -n "$LAST_STATUS" ]; then
		echo "--- last status:" >&2
		jq -c 'del(.scores)' <<<"$LAST_STATUS" >&2 || echo "$LAST_STATUS" >&2
	fi
	echo "--- containers:" >&2
	dc ps >&2 2>&1 || true
	echo "--- last log lines:" >&2
	dc logs --no-color --tail=30 >&2 2>&1 || true
	report
	exit 1
}

# ---------------------------------------------------------------------------
# The seeded random choices: a 31-bit linear congruential generator in shell
# arithmetic, so a seed gives the same choices with any bash.

if [ -n "${E2E_SEED:-}" ]; then
	SEED=$E2E_SEED
else
	SEED=$(($(date +%s%N) % 2147483647))
fi
[[ $SEED =~ ^[0-9]+$ ]] || die "E2E_SEED=$SEED: want a non-negative integer"
RNG=$((SEED & 0x7fffffff))
rnd() { # n: sets REPLY to a number in [0, n)
	RNG=$(((RNG * 1103515245 + 12345) & 0x7fffffff))
	local hi=$((RNG >> 16))
	RNG=$(((RNG * 1103515245 + 12345) & 0x7fffffff))
	REPLY=$((((hi << 15) | (RNG >> 16)) % $1))
}

# ---------------------------------------------------------------------------
# Clocks: everything in milliseconds since the epoch, on the host's clock (the
# one docker and the containers' ledger use too).

now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW=$((t / 1000)); }
iso_ms() { date -d "$1" +%s%3N; }          # an RFC 3339 time from docker inspect
secs() { awk -v d="$1" 'BEGIN { printf "%.3f", d / 1000 }'; } # ms -> "s.sss"
clock() { date -d "@$(awk -v t="$1" 'BEGIN { printf "%.3f", t / 1000 }')" +%H:%M:%S.%3N; }

# ---------------------------------------------------------------------------
# Ports on the host: the first free pair from 17300/17380 up.

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p=$1
	while port_busy "$p"; do p=$((p + 1)); done
	echo "$p"
}
export NICE_IMAGE NICE_PUBLISH_ADDR=127.0.0.1
NICE_GRPC_PORT=${NICE_GRPC_PORT:-$(pick_port 17300)}
NICE_HTTP_PORT=${NICE_HTTP_PORT:-$(pick_port 17380)}
export NICE_GRPC_PORT NICE_HTTP_PORT

# The training run: the same services, with their commands extended.
yaml_list() { # item...
	local a
	for a in "$@"; do printf '      - %s\n' "$(jq -Rn --arg a "$a" '$a')"; done
}
read -r -a coord_extra <<<"$E2E_COORD_FLAGS"
read -r -a worker_extra <<<"$E2E_WORKER_FLAGS"
ckpt_flag=()
[ -z "$E2E_CHECKPOINT_EVERY" ] || ckpt_flag=("--checkpoint-every=$E2E_CHECKPOINT_EVERY")
{
	echo 'version: "2.4"'
	echo 'services:'
	echo '  coordinator:'
	echo '    command:'
	yaml_list /nice-coord serve --listen=:7000 --http=:7080 --gossip=:7946 "--state-dir=$STATE_DIR" \
		"--epochs=$E2E_EPOCHS" "--hidden=$E2E_HIDDEN" "--layers=$E2E_LAYERS" "--batch=$E2E_BATCH" \
		${ckpt_flag[@]+"${ckpt_flag[@]}"} ${coord_extra[@]+"${coord_extra[@]}"}
	echo '  worker:'
	echo '    command:'
	yaml_list /nice-worker --coordinator=coordinator:7000 --join=coordinator:7946 --listen=:7100 --gossip=:7947 \
		${worker_extra[@]+"${worker_extra[@]}"}
} >"$OVERRIDE"

# ---------------------------------------------------------------------------
# Status through the published port, with the nice-coord of the image itself.

S="" # the latest status JSON ("" when the coordinator did not answer)
poll() {
	S=$(timeout 5 "$STATUS_BIN" status --addr "127.0.0.1:$NICE_GRPC_PORT" --json 2>/dev/null) || S=""
	if [ -z "$S" ] || ! jq -e 'type == "object" and has("step") and has("workers")' >/dev/null 2>&1 <<<"$S"; then
		S=""
		return 0
	fi
	LAST_STATUS=$S
}
field() { jq -r "$1" <<<"$S"; }
cur_step() { field '.step'; }
# A worker is live when it is in the ring (rank >= 0) and shown as training.
live_count() { jq -r '[.workers[]? | select(.rank >= 0 and .state == "training")] | length' <<<"$S"; }
summary() {
	jq -r '"phase \(.phase) generation \(.generation) epoch \(.epoch) step \(.step) workers \([.workers[]? | "\(.id)/\(.state)/\(.rank)/\(.gossip // "-")"] | join(" "))"
		+ " | committed \(.committed_steps), redone \(.redone_steps), last checkpoint \(.last_checkpoint_step), ledger_ok \(.ledger_ok), digests_agree \(.digests_agree)"' <<<"$S"
}

# wait_for seconds predicate [args...]: poll until the predicate holds; returns 1
# when the deadline passes first. Sets SEEN to the time status first showed it.
SEEN=0
wait_for() {
	local limit=$1
	shift
	local start
	now_ms
	start=$NOW
	while :; do
		poll
		now_ms
		if [ -n "$S" ] && "$@"; then
			SEEN=$NOW
			return 0
		fi
		if ((NOW - start >= limit * 1000)); then
			return 1
		fi
		sleep "$POLL"
	done
}

# Predicates.
P0=0
TARGET=0
answers() { true; }
healthy() { # 4 live workers, E2E_PROGRESS steps past P0, digests agree
	((P0 >= 0)) || P0=$(cur_step)
	[ "$(field '.phase')" = running ] && [ "$(live_count)" -eq "$WORKERS" ] &&
		(($(cur_step) >= P0 + E2E_PROGRESS)) && [ "$(field '.digests_agree')" = true ]
}
reached() { (($(cur_step) >= TARGET)); }

wait_healthy() { # what
	poll
	P0=-1
	[ -z "$S" ] || P0=$(cur_step)
	wait_for "$E2E_WAIT" healthy ||
		fail "timed out after ${E2E_WAIT}s waiting for $WORKERS live workers, $E2E_PROGRESS more steps and agreeing digests ($1)"
	if [ "$(field '.ledger_ok')" != true ]; then
		fail "ledger_ok is false at step $(cur_step): a sample was skipped or used twice"
	fi
}

# ---------------------------------------------------------------------------
# The ledger: one JSON line per commit, with the global step index (0-based:
# status "step" counts the steps committed) and the commit's unix_nano.

COORD=""
read_ledger() {
	docker cp "$COORD:$STATE_DIR/ledger.jsonl" "$LEDGER" >/dev/null 2>&1
}
# fault_step ms: the status step when the fault hit, i.e. 1 + the index of the
# last step committed at or before that instant.
fault_step() {
	jq -n --argjson tf "$1" '
		reduce (inputs | select(.unix_nano / 1e6 <= $tf) | {s: .step, t: (.unix_nano / 1e6)}) as $r
			(null; if . == null or $r.t >= .t then $r else . end)
		| if . == null then 0 else .s + 1 end' "$LEDGER"
}
# committed_after index ms: when step index was first committed after ms ("" if not yet).
committed_after() {
	jq -n --argjson s "$1" --argjson tf "$2" '
		first(inputs | select(.step == $s and .unix_nano / 1e6 > $tf) | .unix_nano / 1e6 | floor) // empty' "$LEDGER"
}

# recovery_time fault_ms fault_step: the instant (ms) step fault_step+2 was
# committed, from the ledger, else from polling; sets HOW to say which.
HOW=""
RECOVERED=0
recovery_time() {
	local tf=$1 sf=$2 t="" start
	now_ms
	start=$NOW
	while :; do
		if read_ledger; then
			t=$(committed_after $((sf + 1)) "$tf")
		fi
		if [ -n "$t" ]; then
			RECOVERED=$t HOW=ledger
			return 0
		fi
		now_ms
		if ((NOW - start >= 10000)); then
			RECOVERED=$SEEN HOW="status poll (no ledger record)"
			return 0
		fi
		sleep 0.5
	done
}

# ---------------------------------------------------------------------------
# Measurements.

declare -A VALUES=() # kind -> space-separated seconds (or "timeout")
record() { # kind value
	VALUES[$1]="${VALUES[$1]:-} $2"
}

# pick_victim: a live worker's rank at random; sets VICTIM_ID, VICTIM_RANK, VICTIM (container).
pick_victim() {
	local n
	n=$(live_count)
	rnd "$n"
	VICTIM_RANK=$REPLY
	VICTIM_ID=$(jq -r --argjson r "$VICTIM_RANK" '.workers[] | select(.rank == $r) | .id' <<<"$S" | head -n 1)
	[ -n "$VICTIM_ID" ] || fail "no worker at rank $VICTIM_RANK in status"
	VICTIM=$(container_of_worker "$VICTIM_ID") || fail "no container with hostname $VICTIM_ID (worker of rank $VICTIM_RANK)"
}

# random_gap: sleep a seeded random time before the fault (this picks the fault's
# moment; it synchronises nothing).
random_gap() {
	rnd $(((E2E_GAP_MAX - E2E_GAP_MIN) * 1000 + 1))
	GAP_MS=$((E2E_GAP_MIN * 1000 + REPLY))
	sleep "$(secs "$GAP_MS")"
}

# event_ms container event since_ms: the time (ms) of docker's last such event
# for the container since since_ms, or "" if none.
event_ms() {
	local ev
	ev=$(timeout 10 docker events --since "$(awk -v t="$3" 'BEGIN { printf "%.3f", t / 1000 - 1 }')" --until "$EPOCHREALTIME" \
		--filter "container=$1" --filter "event=$2" --format '{{.TimeNano}}' 2>/dev/null | tail -n 1) || ev=""
	if [[ $ev =~ ^[0-9]{19}$ ]]; then echo $((ev / 1000000)); fi
}

load1() { local a _; read -r a _ </proc/loadavg 2>/dev/null && echo "$a" || echo "?"; }

# wait_recovered kind fault_ms: S is the fault step; waits for S+2, records.
# Returns 1 on timeout.
FSTEP=0
wait_recovered() {
	local kind=$1 tf=$2
	read_ledger || fail "could not copy $STATE_DIR/ledger.jsonl out of the coordinator container"
	FSTEP=$(fault_step "$tf")
	TARGET=$((FSTEP + 2))
	if ! wait_for "$E2E_WAIT" reached; then
		log "$kind: no recovery within ${E2E_WAIT}s of the fault at step $FSTEP (step now ${S:+$(cur_step)})"
		return 1
	fi
	recovery_time "$tf" "$FSTEP"
	return 0
}

measure_worker_kill() { # i
	local i=$1 tf gen0 t0
	wait_healthy "before worker-kill $i"
	pick_victim
	random_gap
	poll
	gen0=$(field '.generation')
	now_ms
	t0=$NOW
	docker kill "$VICTIM" >/dev/null || fail "docker kill of worker $VICTIM_ID failed"
	timeout 30 docker wait "$VICTIM" >/dev/null || fail "the killed worker $VICTIM_ID did not exit"
	tf=$(event_ms "$VICTIM" kill "$t0")
	[ -n "$tf" ] || tf=$(iso_ms "$(docker inspect -f '{{.State.FinishedAt}}' "$VICTIM")")
	if wait_recovered worker-kill "$tf"; then
		local d=$((RECOVERED - tf))
		record worker-kill "$(secs "$d")"
		log "worker-kill $i/$E2E_RUNS: worker $VICTIM_ID (rank $VICTIM_RANK) killed at $(clock "$tf"), step $FSTEP (after a ${GAP_MS} ms wait); step $TARGET committed $(secs "$d") s later [$HOW; this script's status polling saw it after $(secs $((SEEN - tf))) s]; generation $gen0 -> $(field '.generation'); load $(load1)"
	else
		record worker-kill timeout
	fi
	# Back to 4: a new container in the victim's place.
	docker rm -f "$VICTIM" >/dev/null 2>&1 || true
	local t0
	now_ms
	t0=$NOW
	dc up -d --no-recreate --scale "worker=$WORKERS" >"$WORKDIR/up.log" 2>&1 ||
		fail "${COMPOSE[*]} up --scale worker=$WORKERS failed: $(tail -n 5 "$WORKDIR/up.log")"
	wait_healthy "after scaling back to $WORKERS following worker-kill $i"
	log "  scaled back to $WORKERS workers: training with $WORKERS again $(secs $((SEEN - t0))) s after up"
}

measure_worker_freeze() { # i
	local i=$1 tf t0 gen0
	wait_healthy "before worker-freeze $i"
	pick_victim
	random_gap
	poll
	gen0=$(field '.generation')
	now_ms
	t0=$NOW
	docker pause "$VICTIM" >/dev/null || fail "docker pause of worker $VICTIM_ID failed"
	now_ms
	# The instant the freeze took effect: docker's pause event; else when pause returned.
	tf=$(event_ms "$VICTIM" pause "$t0")
	[ -n "$tf" ] || tf=$NOW
	now_ms
	local left=$((E2E_FREEZE * 1000 - (NOW - tf)))
	((left > 0)) || left=0
	(
		sleep "$(secs "$left")"
		docker unpause "$VICTIM" >/dev/null
	) &
	UNPAUSE_PID=$!
	if wait_recovered worker-freeze "$tf"; then
		local d=$((RECOVERED - tf))
		record worker-freeze "$(secs "$d")"
		log "worker-freeze $i/$E2E_RUNS: worker $VICTIM_ID (rank $VICTIM_RANK) frozen for ${E2E_FREEZE}s at $(clock "$tf"), step $FSTEP (after a ${GAP_MS} ms wait); step $TARGET committed $(secs "$d") s later [$HOW; this script's status polling saw it after $(secs $((SEEN - tf))) s]; generation $gen0 -> $(field '.generation'); load $(load1)"
	else
		record worker-freeze timeout
	fi
	wait "$UNPAUSE_PID" || fail "docker unpause of worker $VICTIM_ID failed"
	UNPAUSE_PID=""
	wait_healthy "after worker $VICTIM_ID was unfrozen (worker-freeze $i)"
}

measure_coordinator_kill() { # i
	local i=$1 tf ts gen0 t0
	wait_healthy "before coordinator-kill $i"
	random_gap
	poll
	gen0=$(field '.generation')
	now_ms
	t0=$NOW
	docker kill "$COORD" >/dev/null || fail "docker kill of the coordinator failed"
	timeout 30 docker wait "$COORD" >/dev/null || fail "the killed coordinator did not exit"
	docker start "$COORD" >/dev/null || fail "docker start of the coordinator failed"
	tf=$(event_ms "$COORD" kill "$t0")
	[ -n "$tf" ] || tf=$(iso_ms "$(docker inspect -f '{{.State.FinishedAt}}' "$COORD")")
	ts=$(iso_ms "$(docker inspect -f '{{.State.StartedAt}}' "$COORD")")
	if wait_recovered coordinator-kill "$tf"; then
		local d=$((RECOVERED - tf)) ds=$((RECOVERED - ts))
		record coordinator-kill "$(secs "$d")"
		record coordinator-start "$(secs "$ds")"
		log "coordinator-kill $i/$E2E_RUNS: killed at $(clock "$tf"), step $FSTEP (after a ${GAP_MS} ms wait), new process started $(secs $((ts - tf))) s later; step $TARGET committed $(secs "$d") s after the kill, $(secs "$ds") s after the start [$HOW]; generation $gen0 -> $(field '.generation'); load $(load1)"
	else
		record coordinator-kill timeout
		record coordinator-start timeout
	fi
}

# ---------------------------------------------------------------------------
# The report: each kind's values, median and max (a timeout counts as longer
# than any value), and one JSON line.

stats_json() { # kind
	local v
	v=$(for x in ${VALUES[$1]:-}; do if [ "$x" = timeout ]; then echo null; else echo "$x"; fi; done | jq -sc .)
	jq -cn --argjson v "$v" --argjson wait "$E2E_WAIT" '
		($v | map(if . == null then infinite else . end) | sort) as $s
		| ($s | length) as $n
		| def out: if . == infinite then null else . end;
		{n: $n,
		 timeouts: ($v | map(select(. == null)) | length),
		 median: (if $n == 0 then null elif $n % 2 == 1 then $s[($n - 1) / 2] | out
		          else (($s[$n / 2 - 1] + $s[$n / 2]) / 2 * 1000 | round / 1000) | out end),
		 max: (if $n == 0 then null else $s[-1] | out end),
		 values: $v}'
}
REPORTED=0
report() {
	[ "$REPORTED" = 0 ] || return 0
	REPORTED=1
	local kinds=() k
	for k in $E2E_FAULTS; do
		kinds+=("$k")
		[ "$k" != coordinator-kill ] || kinds+=(coordinator-start)
	done
	echo
	echo "Recovery times (seconds from the fault to step S+2 committed; seed $SEED; image $NICE_IMAGE):"
	local json="{}" s
	for k in "${kinds[@]}"; do
		[ -n "${VALUES[$k]:-}" ] || continue
		s=$(stats_json "$k")
		jq -r --arg k "$k" --argjson w "$E2E_WAIT" \
			'"  \($k | . + " " * (18 - length)) n \(.n)  median \(.median // "> \($w)")  max \(.max // "> \($w)")  timeouts \(.timeouts)  values \(.values | map(. // "timeout") | join(" "))"' <<<"$s"
		json=$(jq -c --arg k "$k" --argjson s "$s" '.[$k] = $s' <<<"$json")
	done
	jq -cn --argjson r "$json" --arg seed "$SEED" --arg image "$NICE_IMAGE" --arg id "${IMAGE_ID:-}" \
		--argjson hidden "$E2E_HIDDEN" --argjson layers "$E2E_LAYERS" --argjson batch "$E2E_BATCH" \
		--argjson freeze "$E2E_FREEZE" --arg rate "${RATE:-}" --arg faults "$E2E_FAULTS" '
		{test: "recovery", seed: ($seed | tonumber), image: $image, image_id: $id, workers: 4,
		 hidden: $hidden, layers: $layers, batch: $batch, freeze_seconds: $freeze,
		 steps_per_second: ($rate | tonumber? // null), kinds: ($faults | split(" ") | map(select(. != "")))} + $r'
}

# ---------------------------------------------------------------------------
log "compose: ${COMPOSE[*]}; project $PROJECT; image $NICE_IMAGE; host ports $NICE_GRPC_PORT (gRPC), $NICE_HTTP_PORT (HTTP)"
log "seed $SEED (replay these choices with E2E_SEED=$SEED)"

case $E2E_BUILD in
make) make images IMAGE="$NICE_IMAGE" || die "make images failed" ;;
compose) dc build || die "${COMPOSE[*]} build failed" ;;
none) docker image inspect "$NICE_IMAGE" >/dev/null 2>&1 || die "E2E_BUILD=none but there is no image $NICE_IMAGE" ;;
*) die "E2E_BUILD=$E2E_BUILD: want make, compose or none" ;;
esac
IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$NICE_IMAGE")
# The image's own nice-coord, run on the host (it is static).
tmpc=$(docker create "$NICE_IMAGE" /nice-coord) || die "docker create $NICE_IMAGE failed"
docker cp "$tmpc:/nice-coord" "$STATUS_BIN" >/dev/null || { docker rm "$tmpc" >/dev/null; die "could not copy /nice-coord out of $NICE_IMAGE"; }
docker rm "$tmpc" >/dev/null

# The cluster's credentials, which docker-compose.yml mounts as secrets; this
# script's status calls present them too (NICE_TLS_DIR).
"$STATUS_BIN" init --dir "$WORKDIR/secrets" --group-readable >/dev/null || die "nice-coord init --dir $WORKDIR/secrets failed"
NICE_SECRETS=$WORKDIR/secrets NICE_TLS_DIR=$WORKDIR/secrets NICE_SECRETS_GID=$(id -g)
export NICE_SECRETS NICE_TLS_DIR NICE_SECRETS_GID

log "starting the coordinator and $WORKERS workers (hidden $E2E_HIDDEN x $E2E_LAYERS, batch $E2E_BATCH)"
timeout $((E2E_WAIT + 120)) "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" \
	up -d --scale "worker=$WORKERS" >"$WORKDIR/up.log" 2>&1 || fail "${COMPOSE[*]} up did not bring the cluster up: $(tail -n 5 "$WORKDIR/up.log")"
COORD=$(containers coordinator | head -n 1)
[ -n "$COORD" ] || fail "no coordinator container"
wait_for "$E2E_WAIT" answers || fail "the coordinator did not answer nice-coord status on 127.0.0.1:$NICE_GRPC_PORT within ${E2E_WAIT}s"
wait_healthy "at the start"
# The step rate before any fault, over about 10 s.
s0=$(cur_step)
now_ms
t0=$NOW
TARGET=$((s0 + 1))
wait_for "$E2E_WAIT" reached || fail "no step committed within ${E2E_WAIT}s"
sleep 10
poll
now_ms
RATE=$(awk -v n=$(($(cur_step) - s0)) -v d=$((NOW - t0)) 'BEGIN { printf "%.1f", n * 1000 / d }')
log "training: $RATE steps/s with $WORKERS workers; $(summary)"

for kind in $E2E_FAULTS; do
	log "--- $kind, $E2E_RUNS times"
	for ((i = 1; i <= E2E_RUNS; i++)); do
		case $kind in
		worker-kill) measure_worker_kill "$i" ;;
		worker-freeze) measure_worker_freeze "$i" ;;
		coordinator-kill) measure_coordinator_kill "$i" ;;
		esac
	done
done

poll
[ -z "$S" ] || log "final: $(summary)"
if [ -n "$S" ] && [ "$(field '.ledger_ok')" != true ]; then
	fail "ledger_ok is false at the end: a sample was skipped or used twice"
fi
report
