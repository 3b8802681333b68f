#!/usr/bin/env bash
# campaign.sh: a seeded randomized fault campaign against the compose cluster,
# judged by the one thing that matters: the faulted run computes exactly the
# mathematics of its steps, every step once.
#
#   1. (only with E2E_REFERENCE=1) an uninterrupted run of the same
#      configuration, to the end; its per-epoch test log-likelihoods are
#      compared with the campaign's at the coarse tolerance E2E_TOL
#   2. a run of a tiny model (hidden 32 x 1 per coupling, batch 64, learning
#      rate 1e-4, 6 epochs) on coordinator and 4 workers, from an empty
#      volume, while E2E_FAULTS faults drawn in seeded random order hit it,
#      each after a seeded random wait:
#        worker-kill          docker kill a worker; after a random while either
#                             start the same container again (a returning worker
#                             with an old state) or replace it (scale back to 4)
#        coordinator-kill     docker kill the coordinator; docker start it again
#        worker-freeze        docker pause a worker for a random while, unpause
#        coordinator-freeze   docker pause the coordinator for a random while, unpause
#        worker-cut           docker network disconnect a worker for a random
#                             while, connect it again
#        worker-restart       docker restart a worker (SIGTERM, then start)
#        coordinator-restart  compose stop, then compose start, the coordinator
#        workers-restart      compose stop, then compose start, every worker
#      (the first faults are one of each kind, in random order; the rest are
#      drawn at random). Every fault is undone before the next one, but nothing
#      waits for the cluster to recover in between.
#   3. the faulted run must then finish, and:
#      - `nice-coord verify` (run in the image, on the coordinator's state
#        volume once the coordinator is stopped) replays the ledger in one
#        process, each step with the shards and the ring size it was run with,
#        and finds every stored checkpoint equal to the replay bit for bit and
#        every epoch score equal to the replayed model's within 1e-6. This is
#        the exactness check: it holds whatever the faults did, while a
#        comparison with an uninterrupted run cannot be exact, because other
#        worker counts sum the gradients in another order. At learning rate
#        1e-4 those roundings move the scores by up to 4e-8 (relative; the
#        same schedules replayed in one process), while one step more or less
#        moves them by about 1e-4. One CI run was 1.5e-5 from the reference
#        with its ledger and digests in order, a deviation sum order cannot
#        make and whose cause was not found; verify now names such a step;
#      - the last step is epochs x steps_per_epoch; ledger_ok and digests_agree
#        hold, in every status read during the campaign and at the end;
#      - the ledger (ledger.jsonl in the coordinator's state folder), read here
#        independently: every step index 0..total-1 committed, the last commit of
#        each step's shards partitioning its batch, no step committed twice by
#        one coordinator process;
#      - no process panicked, and docker restarted no container after a failure.
#
# It prints the seed first (E2E_SEED replays the same faults, victims and waits;
# the cluster's own timing still varies), every fault as it is injected, and at
# the end one PASS or FAIL summary naming each failed check with the status and
# log lines that show it, then one JSON line. It leaves nothing running (down -v).
# Where no Docker engine answers, it says so and exits 0 without running anything.
#
# Settings (environment):
#   E2E_SEED        seed of the campaign (default: from the clock)
#   E2E_FAULTS      faults to inject (default 12)
#   E2E_KINDS       fault kinds to draw from (default: all eight above)
#   E2E_GAP_MAX     most seconds to wait before each fault (default 6)
#   E2E_DOWN_MAX    most seconds a worker stays killed, frozen or cut off (default 10)
#   E2E_EPOCHS, E2E_HIDDEN, E2E_LAYERS, E2E_BATCH, E2E_LR, E2E_CHECKPOINT_EVERY
#                   the training run (defaults 6, 32, 1, 64, 1e-4, 50; 6 epochs
#                   take about 2.5 minutes on two cores, so most faults land
#                   while it trains and the last ones once it has finished)
#   E2E_VALIDATION=1  train with --validation (score on held-out training images)
#   E2E_REFERENCE=1 also run the uninterrupted reference first (default 0)
#   E2E_TOL         relative tolerance on each epoch's test log-likelihood
#                   against the reference (default 1e-3: a coarse check)
#   E2E_BASELINE    a file for the reference scores: read if it exists (and made
#                   with the same configuration), else written after the
#                   uninterrupted run (implies E2E_REFERENCE=1)
#   E2E_BUILD       make (default: `make images`), compose, none (use $NICE_IMAGE as it is)
#   NICE_IMAGE      image to run (default nice:local)
#   E2E_COMPOSE     compose command (default: `docker compose` if present, else docker-compose)
#   E2E_WAIT        seconds allowed for the cluster to come up (default 180)
#   E2E_FINISH      seconds allowed for a run to finish once its faults are over (default 900)
#   E2E_COORD_FLAGS, E2E_WORKER_FLAGS
#                   extra flags for `nice-coord serve` and `nice-worker`, split on spaces
#   NICE_GRPC_PORT, NICE_HTTP_PORT
#                   host ports (default: the first free ones from 17400 and 17480)
#   E2E_KEEP=1      leave the faulted cluster running at the end (default: down -v)
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
NAME=test/e2e/campaign.sh

ALL_KINDS="worker-kill coordinator-kill worker-freeze coordinator-freeze worker-cut worker-restart coordinator-restart workers-restart"
E2E_FAULTS=${E2E_FAULTS:-12}
E2E_KINDS=${E2E_KINDS:-$ALL_KINDS}
E2E_GAP_MAX=${E2E_GAP_MAX:-6}
E2E_DOWN_MAX=${E2E_DOWN_MAX:-10}
E2E_EPOCHS=${E2E_EPOCHS:-6}
E2E_HIDDEN=${E2E_HIDDEN:-32}
E2E_LAYERS=${E2E_LAYERS:-1}
E2E_BATCH=${E2E_BATCH:-64}
E2E_LR=${E2E_LR:-1e-4}
E2E_CHECKPOINT_EVERY=${E2E_CHECKPOINT_EVERY:-50}
E2E_VALIDATION=${E2E_VALIDATION:-0}
E2E_TOL=${E2E_TOL:-1e-3}
E2E_BASELINE=${E2E_BASELINE:-}
E2E_REFERENCE=${E2E_REFERENCE:-0}
[ -z "$E2E_BASELINE" ] || E2E_REFERENCE=1
E2E_BUILD=${E2E_BUILD:-make}
NICE_IMAGE=${NICE_IMAGE:-nice:local}
E2E_WAIT=${E2E_WAIT:-180}
E2E_FINISH=${E2E_FINISH:-900}
E2E_COORD_FLAGS=${E2E_COORD_FLAGS:-}
E2E_WORKER_FLAGS=${E2E_WORKER_FLAGS:-}
E2E_KEEP=${E2E_KEEP:-0}
WORKERS=4
POLL=1
STATE_DIR=/var/lib/nice

log() { printf '[campaign %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------
# Where there is nothing to test against, say so plainly.

if ! command -v docker >/dev/null 2>&1; then
	echo "SKIPPED $NAME: no docker command on this machine, so the fault campaign did not run."
	exit 0
fi
if ! timeout 20 docker info >/dev/null 2>&1; then
	echo "SKIPPED $NAME: no Docker engine answers here (docker info failed), so the fault campaign did not run."
	exit 0
fi

die() {
	echo "FAIL $NAME: $*" >&2
	exit 1
}

command -v jq >/dev/null 2>&1 || die "jq is needed to read the status JSON; install it (apt-get install jq)"
read -r -a KINDS <<<"$E2E_KINDS"
((${#KINDS[@]} > 0)) || die "E2E_KINDS is empty"
for k in "${KINDS[@]}"; do
	[[ " $ALL_KINDS " == *" $k "* ]] || die "E2E_KINDS: unknown fault kind '$k' (want some of: $ALL_KINDS)"
done
[[ $E2E_FAULTS =~ ^[0-9]+$ ]] || die "E2E_FAULTS=$E2E_FAULTS: want a number"

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
# The reference run and the faulted run are two projects, one after the other.
BASE_PROJECT=${E2E_PROJECT:-nicecampaign$$}ref
CAMP_PROJECT=${E2E_PROJECT:-nicecampaign$$}
PROJECT=$BASE_PROJECT
others=$(docker ps --format '{{.Label "com.docker.compose.project"}}' | sort -u | grep -v -x -e '' -e "$BASE_PROJECT" -e "$CAMP_PROJECT" || true)
[ -z "$others" ] || log "note: containers of other compose projects are running ($(echo "$others" | tr '\n' ' ')); they share the machine"

WORKDIR=$(mktemp -d)
OVERRIDE=$WORKDIR/docker-compose.campaign.yml
LEDGER=$WORKDIR/ledger.jsonl
STATUS_BIN=$WORKDIR/nice-coord
LAST_STATUS=""
BG_PID=""

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" "$@"; }

# Containers are found by compose's labels, which v2 and 1.29 both set; workers
# in the order of their compose number, so a seed picks the same one again.
containers() { # service [extra docker ps flags...]
	local svc=$1
	shift
	docker ps --no-trunc --format '{{.Label "com.docker.compose.container-number"}} {{.ID}}' \
		--filter "label=com.docker.compose.project=$PROJECT" \
		--filter "label=com.docker.compose.service=$svc" "$@" | sort -n | awk '{ print $2 }'
}
short() { # container: its name and hostname (the worker id), for the log
	local n
	n=$(docker inspect -f '{{.Name}} ({{.Config.Hostname}})' "$1" 2>/dev/null) || n=${1:0:12}
	echo "${n#/}"
}

restore_all() { # undo whatever a fault left: unpause, reconnect, start
	local c
	for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter status=paused); do
		docker unpause "$c" >/dev/null 2>&1 || true
	done
	if [ -n "${CUT:-}" ]; then
		docker network connect --alias worker "$CUT_NET" "$CUT" >/dev/null 2>&1 || true
		CUT=""
	fi
}

down_project() { # project
	local keep=$PROJECT
	PROJECT=$1
	restore_all
	dc down -v --remove-orphans >/dev/null 2>&1 || true
	PROJECT=$keep
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$BG_PID" ]; then
		kill "$BG_PID" 2>/dev/null || true
		wait "$BG_PID" 2>/dev/null || true
	fi
	down_project "$BASE_PROJECT"
	if [ "$E2E_KEEP" = 1 ] && [ "$PROJECT" = "$CAMP_PROJECT" ]; then
		restore_all
		log "E2E_KEEP=1: leaving project $CAMP_PROJECT up (remove it with: ${COMPOSE[*]} -p $CAMP_PROJECT -f docker-compose.yml -f $OVERRIDE down -v)"
	else
		down_project "$CAMP_PROJECT"
		rm -rf "$WORKDIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'abort "interrupted"' INT TERM

# abort: the campaign could not go on at all (not a finding about training).
abort() {
	echo >&2
	echo "FAIL $NAME (seed $SEED): $*" >&2
	excerpts >&2
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
rnd_ms() { # min_s max_s: sets MS to a random number of milliseconds in [min, max] s
	rnd $((($2 - $1) * 1000 + 1))
	MS=$(($1 * 1000 + REPLY))
}
secs() { awk -v d="$1" 'BEGIN { printf "%.3f", d / 1000 }'; }
now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW=$((t / 1000)); }

# ---------------------------------------------------------------------------
# Ports on the host: the first free pair from 17400/17480 up.

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p=$1
	while port_busy "$p"; do p=$((p + 1)); done
	echo "$p"
}
export NICE_IMAGE NICE_PUBLISH_ADDR=127.0.0.1
NICE_GRPC_PORT=${NICE_GRPC_PORT:-$(pick_port 17400)}
NICE_HTTP_PORT=${NICE_HTTP_PORT:-$(pick_port 17480)}
export NICE_GRPC_PORT NICE_HTTP_PORT

# The training run: the same services, with their commands extended.
yaml_list() { # item...
	local a
	for a in "$@"; do printf '      - %s\n' "$(jq -Rn --arg a "$a" '$a')"; done
}
read -r -a coord_extra <<<"$E2E_COORD_FLAGS"
read -r -a worker_extra <<<"$E2E_WORKER_FLAGS"
val_flag=()
[ "$E2E_VALIDATION" != 1 ] || val_flag=(--validation)
TRAIN_FLAGS=("--epochs=$E2E_EPOCHS" "--hidden=$E2E_HIDDEN" "--layers=$E2E_LAYERS" "--batch=$E2E_BATCH" "--lr=$E2E_LR"
	"--checkpoint-every=$E2E_CHECKPOINT_EVERY" ${val_flag[@]+"${val_flag[@]}"} ${coord_extra[@]+"${coord_extra[@]}"})
{
	echo 'version: "2.4"'
	echo 'services:'
	echo '  coordinator:'
	echo '    command:'
	yaml_list /nice-coord serve --listen=:7000 --http=:7080 --gossip=:7946 "--state-dir=$STATE_DIR" "${TRAIN_FLAGS[@]}"
	echo '  worker:'
	echo '    command:'
	yaml_list /nice-worker --coordinator=coordinator:7000 --join=coordinator:7946 --listen=:7100 --gossip=:7947 \
		${worker_extra[@]+"${worker_extra[@]}"}
} >"$OVERRIDE"
CONFIG="${TRAIN_FLAGS[*]}"

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
field() { jq -r "$@" <<<"$S"; }
live_count() { jq -r '[.workers[]? | select(.rank >= 0 and .state == "training")] | length' <<<"$S"; }
brief() { # a one-line summary of S
	if [ -z "$S" ]; then
		echo "coordinator not answering"
		return
	fi
	jq -r '"\(.phase) gen \(.generation) epoch \(.epoch) step \(.step)/\(.epochs * .steps_per_epoch) workers \([.workers[]? | "\(.id[0:6])/\(.state)/\(.rank)"] | join(" "))"
		+ " ckpt \(.last_checkpoint_step) redone \(.redone_steps) ledger_ok \(.ledger_ok) digests_agree \(.digests_agree)"' <<<"$S"
}

wait_for() { # seconds what predicate [args...]: poll until it holds; 1 on timeout
	local limit=$1 what=$2 start
	shift 2
	start=$(date +%s)
	while :; do
		poll
		if [ -n "$S" ] && "$@"; then
			return 0
		fi
		if (($(date +%s) - start >= limit)); then
			log "timed out after ${limit}s waiting for $what; last: $(brief)"
			return 1
		fi
		sleep "$POLL"
	done
}
healthy() { [ "$(field '.phase')" = running ] && [ "$(live_count)" -eq "$WORKERS" ] && (($(field '.step') >= 1)); }
# Finished: the last epoch is scored (an epoch whose score was lost is a finding
# of its own, below, not a reason to wait).
finished() {
	# shellcheck disable=SC2016 # $e is jq's
	[ "$(field '.phase')" = finished ] && [ "$(field --argjson e "$E2E_EPOCHS" 'any(.scores[]?; .epoch == $e)')" = true ]
}

# ---------------------------------------------------------------------------
# Findings. A finding is a failed check: it does not stop the campaign.

declare -a FINDINGS=()
declare -a TIMELINE=()
finding() {
	FINDINGS+=("$*")
	log "FINDING: $*"
}
# check_status where: the invariants every status read must show.
check_status() {
	[ -n "$S" ] || return 0
	if [ "$(field '.ledger_ok')" != true ]; then
		finding "ledger_ok is $(field '.ledger_ok') $1 (ledger_errors $(field '.ledger_errors')): $(brief)"
	fi
	if [ "$(field '.digests_agree')" != true ]; then
		finding "digests_agree is $(field '.digests_agree') $1 (digest_mismatches $(field '.digest_mismatches')): $(brief)"
	fi
}

# excerpts: what a reader needs to see a failure: the fault timeline, the last
# status, the coordinator's last log lines, and warnings and errors of all.
excerpts() {
	if ((${#TIMELINE[@]} > 0)); then
		echo "--- faults (seed $SEED):"
		printf '  %s\n' "${TIMELINE[@]}"
	fi
	if [ -n "$LAST_STATUS" ]; then
		echo "--- last status:"
		jq -c '{phase, generation, epoch, step, steps_per_epoch, epochs, workers: [.workers[]? | "\(.id)/\(.state)/\(.rank)/\(.gossip // "-")"],
			last_checkpoint_step, committed_steps, redone_steps, generations, ledger_ok, ledger_errors, digests_agree, digest_mismatches,
			scores: [.scores[]? | {epoch, step, test_ll}]}' <<<"$LAST_STATUS" 2>/dev/null || echo "$LAST_STATUS"
	fi
	echo "--- containers:"
	dc ps 2>&1 || true
	echo "--- coordinator, last 40 log lines:"
	dc logs --no-color --tail=40 coordinator 2>&1 | cut -c 1-400 || true
	echo "--- the coordinator's resumes and scores:"
	dc logs --no-color coordinator 2>&1 | grep -E 'resum|going on from|no worker holds|epoch scored|no checkpoint' | cut -c 1-300 || true
	echo "--- warnings and errors of every container, memberlist's own left out (last 30):"
	dc logs --no-color 2>&1 | grep -E 'level=(WARN|ERROR)|panic|fatal' | grep -v 'component=memberlist' | tail -n 30 | cut -c 1-400 || true
	echo "--- how often (all containers):"
	local pat
	for pat in 'stale generation' 'resuming from' 'component=memberlist' 'level=ERROR'; do
		printf '  %-22s %s lines\n' "$pat" "$(dc logs --no-color 2>&1 | grep -c -e "$pat" || true)"
	done
}

# ---------------------------------------------------------------------------
# Bringing a run up and to its end.

up() {
	timeout $((E2E_WAIT + 120)) "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" \
		up -d --scale "worker=$WORKERS" >"$WORKDIR/up.log" 2>&1 ||
		abort "${COMPOSE[*]} up did not bring project $PROJECT up: $(tail -n 5 "$WORKDIR/up.log")"
	wait_for "$E2E_WAIT" "$WORKERS workers training" healthy ||
		abort "project $PROJECT did not start training with $WORKERS workers within ${E2E_WAIT}s"
}

coordinator() { containers coordinator -a | head -n 1; }
read_ledger() {
	local c
	c=$(coordinator)
	[ -n "$c" ] && docker cp "$c:$STATE_DIR/ledger.jsonl" "$LEDGER" >/dev/null 2>&1
}

# ledger_check total: the ledger, read independently of the coordinator's own check.
ledger_check() {
	jq -sc --argjson total "$1" '
		(group_by(.step) | map(max_by(.unix_nano))) as $last
		| {records: length,
		   missing: ([range(0; $total)] - ($last | map(.step))),
		   beyond: [$last[] | select(.step >= $total) | .step],
		   not_partitioned: [$last[] | select(
				(.shards | sort_by(.Lo)) as $sh
				| ($sh | length) == 0 or $sh[0].Lo != 0 or $sh[-1].Hi != .batch
				  or ([range(1; $sh | length) as $i | select($sh[$i].Lo != $sh[$i - 1].Hi)] | length) > 0) | .step],
		   twice_by_one_coordinator: [group_by([.step, .coordinator])[] | select(length > 1) | .[0].step]}' "$LEDGER"
}

# crashes: panics in the logs, and containers docker restarted after a failure.
crashes() {
	local c n out=""
	if dc logs --no-color 2>&1 | grep -E '^[^|]*\| (panic:|fatal error:)' >"$WORKDIR/panics" 2>/dev/null; then
		out+="panics in the logs: $(head -n 3 "$WORKDIR/panics" | cut -c 1-300 | tr '\n' ';') "
	fi
	for c in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
		n=$(docker inspect -f '{{.RestartCount}}' "$c")
		if ((n > 0)); then
			out+="$(short "$c") was restarted $n time(s) by docker after it failed; "
		fi
	done
	echo "$out"
}

# ---------------------------------------------------------------------------
# The faults. Each picks its victim and its durations with the seeded generator,
# injects the fault, and undoes it before returning.

pick_worker() { # sets VICTIM (a running worker container) or returns 1
	local all=()
	mapfile -t all < <(containers worker --filter status=running)
	((${#all[@]} > 0)) || return 1
	rnd "${#all[@]}"
	VICTIM=${all[$REPLY]}
}
CUT=""
CUT_NET=""

fault() { # kind: sets WHAT to a description
	local kind=$1 c name
	case $kind in
	worker-kill)
		pick_worker || { WHAT="no running worker to kill"; return 0; }
		c=$VICTIM
		name=$(short "$c")
		rnd_ms 0 "$E2E_DOWN_MAX"
		local down=$MS
		rnd 2
		local how=$REPLY
		docker kill "$c" >/dev/null 2>&1 || true
		sleep "$(secs "$down")"
		if ((how == 0)); then
			docker start "$c" >/dev/null || finding "docker start of the killed worker $name failed"
			WHAT="killed worker $name, started the same container again $(secs "$down") s later"
		else
			docker rm -f "$c" >/dev/null 2>&1 || true
			dc up -d --no-recreate --scale "worker=$WORKERS" >"$WORKDIR/up.log" 2>&1 ||
				finding "${COMPOSE[*]} up --scale worker=$WORKERS failed: $(tail -n 3 "$WORKDIR/up.log" | tr '\n' ' ')"
			WHAT="killed worker $name, replaced it with a new container $(secs "$down") s later"
		fi
		;;
	coordinator-kill)
		c=$(coordinator)
		rnd_ms 0 3
		docker kill "$c" >/dev/null 2>&1 || true
		timeout 30 docker wait "$c" >/dev/null 2>&1 || true
		sleep "$(secs "$MS")"
		docker start "$c" >/dev/null || finding "docker start of the killed coordinator failed"
		WHAT="killed the coordinator, started it again $(secs "$MS") s later"
		;;
	worker-freeze | coordinator-freeze)
		if [ "$kind" = worker-freeze ]; then
			pick_worker || { WHAT="no running worker to freeze"; return 0; }
			c=$VICTIM
		else
			c=$(coordinator)
		fi
		rnd_ms 1 "$E2E_DOWN_MAX"
		docker pause "$c" >/dev/null || finding "docker pause of $(short "$c") failed"
		sleep "$(secs "$MS")"
		docker unpause "$c" >/dev/null || finding "docker unpause of $(short "$c") failed"
		WHAT="froze $(short "$c") for $(secs "$MS") s"
		;;
	worker-cut)
		pick_worker || { WHAT="no running worker to cut off"; return 0; }
		c=$VICTIM
		CUT_NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "$c" | grep -m 1 "^$PROJECT") ||
			{ WHAT="worker $(short "$c") is on no network of $PROJECT"; return 0; }
		local ip
		ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$CUT_NET\").IPAddress}}" "$c")
		rnd_ms 1 "$E2E_DOWN_MAX"
		docker network disconnect "$CUT_NET" "$c" || finding "docker network disconnect of $(short "$c") failed"
		CUT=$c
		sleep "$(secs "$MS")"
		# Same address if the network allows choosing it; otherwise whatever it gives.
		if ! docker network connect --ip "$ip" --alias worker "$CUT_NET" "$c" 2>/dev/null; then
			docker network connect --alias worker "$CUT_NET" "$c" || finding "docker network connect of $(short "$c") failed"
		fi
		CUT=""
		WHAT="cut $(short "$c") off the network for $(secs "$MS") s"
		;;
	worker-restart)
		pick_worker || { WHAT="no running worker to restart"; return 0; }
		c=$VICTIM
		docker restart "$c" >/dev/null || finding "docker restart of $(short "$c") failed"
		WHAT="restarted $(short "$c") (docker restart)"
		;;
	coordinator-restart)
		dc stop coordinator >"$WORKDIR/stop.log" 2>&1 || finding "${COMPOSE[*]} stop coordinator failed"
		dc start coordinator >"$WORKDIR/start.log" 2>&1 || finding "${COMPOSE[*]} start coordinator failed: $(tail -n 3 "$WORKDIR/start.log" | tr '\n' ' ')"
		WHAT="stopped and started the coordinator (compose stop, compose start)"
		;;
	workers-restart)
		dc stop worker >"$WORKDIR/stop.log" 2>&1 || finding "${COMPOSE[*]} stop worker failed"
		dc start worker >"$WORKDIR/start.log" 2>&1 || finding "${COMPOSE[*]} start worker failed: $(tail -n 3 "$WORKDIR/start.log" | tr '\n' ' ')"
		WHAT="stopped and started every worker (compose stop worker, compose start worker)"
		;;
	esac
}

# The campaign's plan: one of each kind in random order, then random draws.
PLAN=()
plan() {
	local pool=("${KINDS[@]}") i
	while ((${#pool[@]} > 0 && ${#PLAN[@]} < E2E_FAULTS)); do
		rnd "${#pool[@]}"
		PLAN+=("${pool[$REPLY]}")
		pool=("${pool[@]:0:REPLY}" "${pool[@]:REPLY+1}")
	done
	for ((i = ${#PLAN[@]}; i < E2E_FAULTS; i++)); do
		rnd "${#KINDS[@]}"
		PLAN+=("${KINDS[$REPLY]}")
	done
}

# ---------------------------------------------------------------------------
log "compose: ${COMPOSE[*]}; image $NICE_IMAGE; host ports $NICE_GRPC_PORT (gRPC), $NICE_HTTP_PORT (HTTP)"
log "seed $SEED (replay this campaign with E2E_SEED=$SEED)"
plan
log "config: $CONFIG; $WORKERS workers; faults: ${PLAN[*]}"

case $E2E_BUILD in
make) make images IMAGE="$NICE_IMAGE" || die "make images failed" ;;
compose) dc build || die "${COMPOSE[*]} build failed" ;;
none) docker image inspect "$NICE_IMAGE" >/dev/null 2>&1 || die "E2E_BUILD=none but there is no image $NICE_IMAGE" ;;
*) die "E2E_BUILD=$E2E_BUILD: want make, compose or none" ;;
esac
IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$NICE_IMAGE")
tmpc=$(docker create "$NICE_IMAGE" /nice-coord) || die "docker create $NICE_IMAGE failed"
docker cp "$tmpc:/nice-coord" "$STATUS_BIN" >/dev/null || {
	docker rm "$tmpc" >/dev/null
	die "could not copy /nice-coord out of $NICE_IMAGE"
}
docker rm "$tmpc" >/dev/null

# The cluster's credentials, which docker-compose.yml mounts as secrets; this
# script's status calls present them too (NICE_TLS_DIR).
"$STATUS_BIN" init --dir "$WORKDIR/secrets" --group-readable >/dev/null || die "nice-coord init --dir $WORKDIR/secrets failed"
NICE_SECRETS=$WORKDIR/secrets NICE_TLS_DIR=$WORKDIR/secrets NICE_SECRETS_GID=$(id -g)
export NICE_SECRETS NICE_TLS_DIR NICE_SECRETS_GID

# 1. The reference: the same configuration, uninterrupted. ---------------------
BASE=""
if [ "$E2E_REFERENCE" != 1 ]; then
	log "1. no reference run (E2E_REFERENCE=1 adds one): nice-coord verify judges exactness"
elif [ -n "$E2E_BASELINE" ] && [ -s "$E2E_BASELINE" ]; then
	BASE=$(cat "$E2E_BASELINE")
	[ "$(jq -r '.config' <<<"$BASE")" = "$CONFIG" ] ||
		die "E2E_BASELINE=$E2E_BASELINE was made with another configuration ($(jq -r '.config' <<<"$BASE")), not: $CONFIG"
	log "reference scores from $E2E_BASELINE"
else
	log "1. the reference: an uninterrupted run (project $BASE_PROJECT)"
	PROJECT=$BASE_PROJECT
	t0=$(date +%s)
	up
	wait_for "$E2E_FINISH" "the reference run to finish" finished ||
		abort "the uninterrupted reference run did not finish within ${E2E_FINISH}s"
	log "reference finished in $(($(date +%s) - t0)) s: $(brief)"
	BASE=$(jq -c --arg config "$CONFIG" --arg image "$NICE_IMAGE" \
		'{config: $config, image: $image, step, steps_per_epoch, epochs, ledger_ok, digests_agree, scores: [.scores[] | {epoch, step, test_ll}]}' <<<"$S")
	if [ "$(jq -r '.ledger_ok and .digests_agree and .step == .epochs * .steps_per_epoch' <<<"$BASE")" != true ]; then
		abort "the uninterrupted reference run itself is wrong: $(brief)"
	fi
	down_project "$BASE_PROJECT"
	if [ -n "$E2E_BASELINE" ]; then
		echo "$BASE" >"$E2E_BASELINE"
		log "reference scores saved in $E2E_BASELINE"
	fi
fi
[ -z "$BASE" ] || log "reference scores: $(jq -c '[.scores[] | {epoch, test_ll}]' <<<"$BASE")"

# 2. The campaign. ---------------------------------------------------------------
log "2. the campaign: $E2E_FAULTS faults (project $CAMP_PROJECT)"
PROJECT=$CAMP_PROJECT
T0=$(date +%s)
up
log "training: $(brief)"
for ((i = 0; i < ${#PLAN[@]}; i++)); do
	kind=${PLAN[$i]}
	rnd_ms 0 "$E2E_GAP_MAX"
	GAP=$MS
	sleep "$(secs "$GAP")"
	poll
	before=$(brief)
	check_status "before fault $((i + 1))"
	now_ms
	tf=$NOW
	fault "$kind"
	now_ms
	poll
	line="fault $((i + 1))/${#PLAN[@]} $kind at +$((tf / 1000 - T0)) s (after a $(secs "$GAP") s wait): $WHAT; before: $before; $(secs $((NOW - tf))) s later: $(brief)"
	TIMELINE+=("$line")
	log "$line"
	check_status "after fault $((i + 1)) ($kind)"
done
restore_all

# 3. The end: the faulted run must finish, every step once, exactly. -----------
log "3. faults over after $(($(date +%s) - T0)) s; waiting for the run to finish"
# Whatever the faults left, 4 workers should be there to finish it. compose
# refuses while docker counts the coordinator unhealthy (its health checks fail
# while it is frozen or restarting), so it is asked again until a deadline.
scaled() { dc up -d --no-recreate --scale "worker=$WORKERS" >"$WORKDIR/up.log" 2>&1; }
wait_for "$E2E_WAIT" "${COMPOSE[*]} up --scale worker=$WORKERS to succeed" scaled ||
	finding "${COMPOSE[*]} up --scale worker=$WORKERS after the campaign kept failing for ${E2E_WAIT}s: $(tail -n 3 "$WORKDIR/up.log" | tr '\n' ' ')"
FINISHED=true
if ! wait_for "$E2E_FINISH" "the faulted run to finish" finished; then
	FINISHED=false
	finding "the faulted run did not finish within ${E2E_FINISH}s of the last fault: $(brief)"
fi
poll
check_status "at the end"
FINAL=$S
TOTAL=0
[ -z "$FINAL" ] || TOTAL=$(jq -r '.epochs * .steps_per_epoch' <<<"$FINAL")
CMP="[]"

if [ -z "$FINAL" ]; then
	finding "the coordinator did not answer at the end"
else
	step=$(jq -r '.step' <<<"$FINAL")
	[ "$step" = "$TOTAL" ] || finding "the last step is $step, want $TOTAL ($E2E_EPOCHS epochs x $(jq -r .steps_per_epoch <<<"$FINAL") steps)"
	echo
	echo "Test log-likelihood per epoch (nats per image):"
	jq -r '.scores[]? | "  epoch \(.epoch): \(.test_ll)"' <<<"$FINAL"
fi
if [ -n "$FINAL" ] && [ -n "$BASE" ]; then
	CMP=$(jq -c --argjson b "$BASE" --argjson tol "$E2E_TOL" '
		[range(1; $b.epochs + 1) as $e
		 | ([$b.scores[] | select(.epoch == $e) | .test_ll][-1]) as $ref
		 | ([.scores[]? | select(.epoch == $e) | .test_ll]) as $got
		 | {epoch: $e, reference: $ref, got: $got,
		    rel: ([$got[] | (. - $ref) | fabs / ([($ref | fabs), 1e-12] | max)] | max),
		    ok: (($got | length) > 0 and ($ref != null) and all($got[]; ((. - $ref) | fabs) <= $tol * ($ref | fabs)))}]' <<<"$FINAL")
	echo "Against the uninterrupted reference (tolerance $E2E_TOL relative):"
	jq -r '.[] | "  epoch \(.epoch): reference \(.reference)  campaign \(.got | map(tostring) | join(", "))  rel diff \(.rel // "-")  \(if .ok then "ok" else "DIFFERENT" end)"' <<<"$CMP"
	jq -r '.[] | select(.ok | not) | "epoch \(.epoch): test log-likelihood \(.got | map(tostring) | join(", ") | if . == "" then "missing" else . end), reference \(.reference) (relative difference \(.rel // "-"))"' <<<"$CMP" >"$WORKDIR/score-findings"
	while IFS= read -r l; do finding "$l"; done <"$WORKDIR/score-findings"
fi

if ! read_ledger; then
	finding "could not read $STATE_DIR/ledger.jsonl from the coordinator container"
	LC="{}"
elif ! LC=$(ledger_check "$TOTAL"); then
	finding "could not parse $STATE_DIR/ledger.jsonl"
	LC="{}"
else
	log "ledger: $(jq -c '{records, missing: (.missing | length), beyond: (.beyond | length), not_partitioned: (.not_partitioned | length), twice_by_one_coordinator: (.twice_by_one_coordinator | length)}' <<<"$LC")"
	jq -r '
		(if (.missing | length) > 0 then "ledger: \(.missing | length) step(s) never committed, first \(.missing[0:10])" else empty end),
		(if (.beyond | length) > 0 then "ledger: steps committed beyond the last one (\($total)): \(.beyond[0:10])" else empty end),
		(if (.not_partitioned | length) > 0 then "ledger: the shards of \(.not_partitioned | length) step(s) do not partition their batch, first \(.not_partitioned[0:10])" else empty end),
		(if (.twice_by_one_coordinator | length) > 0 then "ledger: \(.twice_by_one_coordinator | length) step(s) committed twice by one coordinator process (committed work thrown away and redone), steps \(.twice_by_one_coordinator | min)..\(.twice_by_one_coordinator | max)" else empty end)' \
		--argjson total "$TOTAL" <<<"$LC" >"$WORKDIR/ledger-findings"
	while IFS= read -r l; do finding "$l"; done <"$WORKDIR/ledger-findings"
fi

crash=$(crashes)
[ -z "$crash" ] || finding "$crash"

# The exactness check: the coordinator stopped (it locks its checkpoint
# file), `nice-coord verify` runs in the image on its state volume.
VERIFY=skipped
if [ "$FINISHED" = true ]; then
	log "verifying: the coordinator stopped, nice-coord verify replays its ledger"
	if ! dc stop coordinator >"$WORKDIR/stop.log" 2>&1; then
		finding "could not stop the coordinator to verify its state: $(tail -n 2 "$WORKDIR/stop.log" | tr '\n' ' ')"
	elif dc run --rm --no-deps -T coordinator /nice-coord verify --state-dir "$STATE_DIR" >"$WORKDIR/verify.log" 2>&1; then
		VERIFY=pass
		grep -E '^(step|epoch) ' "$WORKDIR/verify.log" | sed 's/^/  /'
		log "$(tail -n 1 "$WORKDIR/verify.log")"
	else
		VERIFY=fail
		cat "$WORKDIR/verify.log"
		finding "nice-coord verify: $(grep -v '^replayed step' "$WORKDIR/verify.log" | tail -n 1)"
	fi
fi

# ---------------------------------------------------------------------------
echo
echo "Faults (seed $SEED):"
printf '  %s\n' "${TIMELINE[@]}"
echo
if ((${#FINDINGS[@]} == 0)); then
	RESULT=PASS
	echo "PASS $NAME (seed $SEED, $(($(date +%s) - T0)) s): $E2E_FAULTS faults; every checkpoint equals the ledger's replay bit for bit (nice-coord verify); last step $TOTAL; ledger and digests agree"
else
	RESULT=FAIL
	{
		echo "FAIL $NAME (seed $SEED; replay with E2E_SEED=$SEED): ${#FINDINGS[@]} finding(s):"
		printf '  - %s\n' "${FINDINGS[@]}"
		echo
		excerpts
	} >&2
fi
jq -cn --arg result "$RESULT" --arg seed "$SEED" --arg image "$NICE_IMAGE" --arg id "$IMAGE_ID" --arg config "$CONFIG" \
	--argjson plan "$(printf '%s\n' "${PLAN[@]}" | jq -Rsc 'split("\n") | map(select(. != ""))')" \
	--argjson findings "$(printf '%s\n' "${FINDINGS[@]+"${FINDINGS[@]}"}" | jq -Rsc 'split("\n") | map(select(. != ""))')" \
	--argjson scores "$CMP" --argjson ledger "$LC" --arg finished "$FINISHED" --argjson total "$TOTAL" --arg verify "$VERIFY" \
	--arg final "$(jq -c '{step, ledger_ok, digests_agree, redone_steps, generations}' <<<"${FINAL:-null}" 2>/dev/null || echo null)" '
	{test: "campaign", result: $result, seed: ($seed | tonumber), image: $image, image_id: $id, config: $config,
	 faults: $plan, finished: ($finished == "true"), verify: $verify, expected_last_step: $total, final: ($final | fromjson? // null),
	 scores: $scores, ledger: ($ledger | {records, missing: (.missing | length?), not_partitioned: (.not_partitioned | length?),
	 twice_by_one_coordinator: (.twice_by_one_coordinator | length?)}), findings: $findings}'
[ "$RESULT" = PASS ]
