#!/usr/bin/env bash
# compose.sh: end-to-end fault tests of the compose cluster (one coordinator,
# four workers), run against docker-compose.yml as a user would run it.
#
#   1. build the images; write the cluster's credentials (nice-coord init), which
#      compose mounts as secrets; bring up the coordinator and 4 workers
#   2. wait for committed steps; status shows 4 workers (from the host and inside)
#   2b. containers on the compose network without the secrets: one refuses to start
#      (no credentials on a non-loopback address), one with --insecure and one
#      with another cluster's credentials are refused at the handshake (TLS and
#      gossip, in the coordinator's and in their own logs), never show in status,
#      and training goes on
#   3. docker kill a worker mid-training: 3 workers, steps continue, ledger exact,
#      digests agree
#   4. scale back to 4: the new worker joins with the same digest
#   5. kill the coordinator and start it again: it resumes from its checkpoint and
#      the same workers reattach by themselves
#   6. disconnect a worker from the network: it is dropped; reconnected, it rejoins
#   7. down and up again: training resumes at exactly the step after the last
#      one committed before down (the workers leave only once it is checkpointed)
#
# It prints each recovery time and fails on any lost or repeated step. Where no
# Docker engine answers, it says so and exits 0 without running anything.
#
# What it reads, from `nice-coord status --json` through the published port:
#   generation, epoch, step (global steps committed since training began),
#   workers[{id, state, rank}] (id: the worker's --id, by default its hostname,
#   which in a container is the container's short id), samples_per_sec, test_ll,
#   last_checkpoint_step, committed_steps, redone_steps, ledger_ok (every sample
#   of each epoch so far used exactly once), digests_agree.
# A worker counts as live when it is in the ring (rank >= 0) and its state is
# not one of E2E_GONE_STATES.
#
# Settings (environment):
#   E2E_BUILD       make (default: `make images`, no registry needed),
#                   compose (the multi-stage Dockerfile: needs the Go image),
#                   none (use $NICE_IMAGE as it is)
#   NICE_IMAGE      image to run (default nice:local)
#   E2E_COMPOSE     compose command (default: `docker compose` if present, else docker-compose)
#   E2E_WAIT        seconds allowed for each wait (default 120)
#   E2E_BUDGET      seconds allowed for the whole run (default 900)
#   E2E_PROGRESS    steps that must be committed for "steps continue" (default 3)
#   E2E_EPOCHS, E2E_HIDDEN, E2E_LAYERS, E2E_BATCH, E2E_CHECKPOINT_EVERY
#                   the small training run (defaults 1000, 32, 1, 256, 10)
#   E2E_COORD_FLAGS, E2E_WORKER_FLAGS
#                   extra flags for `nice-coord serve` and `nice-worker`
#                   (e.g. shorter timeouts), split on spaces
#   E2E_GONE_STATES JSON array of worker states that do not count as live
#                   (default ["dead","left","failed","suspect","gone","removed"])
#   E2E_KEEP=1      leave the cluster running at the end (default: down -v)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

E2E_BUILD=${E2E_BUILD:-make}
NICE_IMAGE=${NICE_IMAGE:-nice:local}
E2E_WAIT=${E2E_WAIT:-120}
E2E_BUDGET=${E2E_BUDGET:-900}
E2E_PROGRESS=${E2E_PROGRESS:-3}
E2E_EPOCHS=${E2E_EPOCHS:-1000}
E2E_HIDDEN=${E2E_HIDDEN:-32}
E2E_LAYERS=${E2E_LAYERS:-1}
E2E_BATCH=${E2E_BATCH:-256}
E2E_CHECKPOINT_EVERY=${E2E_CHECKPOINT_EVERY:-10}
E2E_COORD_FLAGS=${E2E_COORD_FLAGS:-}
E2E_WORKER_FLAGS=${E2E_WORKER_FLAGS:-}
E2E_GONE_STATES=${E2E_GONE_STATES:-'["dead","left","failed","suspect","gone","removed"]'}
E2E_KEEP=${E2E_KEEP:-0}
WORKERS=4
POLL=1

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------
# Where there is nothing to test against, say so plainly.

if ! command -v docker >/dev/null 2>&1; then
	echo "SKIPPED test/e2e/compose.sh: no docker command on this machine, so the compose end-to-end test did not run."
	exit 0
fi
if ! timeout 20 docker info >/dev/null 2>&1; then
	echo "SKIPPED test/e2e/compose.sh: no Docker engine answers here (docker info failed), so the compose end-to-end test did not run."
	exit 0
fi

die() {
	echo "FAIL test/e2e/compose.sh: $*" >&2
	exit 1
}

command -v jq >/dev/null 2>&1 || die "jq is needed to read the status JSON; install it (apt-get install jq)"

if [ -n "${E2E_COMPOSE:-}" ]; then
	read -r -a COMPOSE <<<"$E2E_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
	COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
	COMPOSE=(docker-compose)
else
	die "a Docker engine answers but there is no compose tool (neither 'docker compose' nor docker-compose)"
fi

# A project name of letters and digits only reads the same in compose v2 and
# in docker-compose 1.29 (which drops other characters).
PROJECT=${E2E_PROJECT:-nicee2e$$}
WORKDIR=$(mktemp -d)
OVERRIDE=$WORKDIR/docker-compose.e2e.yml
LAST_STATUS=""
START_S=$(date +%s)

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" "$@"; }

# Containers are found by compose's labels, which v2 and 1.29 both set.
containers() { # service [extra docker ps flags...]
	local svc=$1
	shift
	docker ps -q --no-trunc \
		--filter "label=com.docker.compose.project=$PROJECT" \
		--filter "label=com.docker.compose.service=$svc" "$@"
}
hostname_of() { docker inspect -f '{{.Config.Hostname}}' "$1"; }

cleanup() {
	local rc=$?
	if [ "${#INTRUDERS[@]}" -gt 0 ] || [ -n "$REFUSED_TO_START" ]; then
		docker rm -f ${INTRUDERS[@]+"${INTRUDERS[@]}"} $REFUSED_TO_START >/dev/null 2>&1 || true
	fi
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
	echo "FAIL test/e2e/compose.sh: $*" >&2
	if [ -n "$LAST_STATUS" ]; then
		echo "--- last status:" >&2
		jq . <<<"$LAST_STATUS" >&2 || echo "$LAST_STATUS" >&2
	fi
	echo "--- containers:" >&2
	dc ps >&2 2>&1 || true
	echo "--- last log lines:" >&2
	dc logs --no-color --tail=40 >&2 2>&1 || true
	exit 1
}

# ---------------------------------------------------------------------------
# Ports on the host: the first free pair from 17000/17080 up, so a cluster the
# user runs on 7000/7080 is left alone.

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p=$1
	while port_busy "$p"; do p=$((p + 1)); done
	echo "$p"
}
export NICE_IMAGE NICE_PUBLISH_ADDR=127.0.0.1
NICE_GRPC_PORT=${NICE_GRPC_PORT:-$(pick_port 17000)}
NICE_HTTP_PORT=${NICE_HTTP_PORT:-$(pick_port 17080)}
export NICE_GRPC_PORT NICE_HTTP_PORT

# The small training run: the same services, with their commands extended.
yaml_list() { # item...
	local a
	for a in "$@"; do printf '      - %s\n' "$(jq -Rn --arg a "$a" '$a')"; done
}
read -r -a coord_extra <<<"$E2E_COORD_FLAGS"
read -r -a worker_extra <<<"$E2E_WORKER_FLAGS"
{
	echo 'version: "2.4"'
	echo 'services:'
	echo '  coordinator:'
	echo '    command:'
	yaml_list /nice-coord serve --listen=:7000 --http=:7080 --gossip=:7946 --state-dir=/var/lib/nice \
		"--epochs=$E2E_EPOCHS" "--hidden=$E2E_HIDDEN" "--layers=$E2E_LAYERS" "--batch=$E2E_BATCH" \
		"--checkpoint-every=$E2E_CHECKPOINT_EVERY" ${coord_extra[@]+"${coord_extra[@]}"}
	echo '  worker:'
	echo '    command:'
	yaml_list /nice-worker --coordinator=coordinator:7000 --join=coordinator:7946 --listen=:7100 --gossip=:7947 \
		${worker_extra[@]+"${worker_extra[@]}"}
} >"$OVERRIDE"

# ---------------------------------------------------------------------------
# Status, and the invariants every observation must keep.

# The image's own nice-coord (static), run on the host through the published
# port as a user's would, with the cluster's credentials (NICE_TLS_DIR).
STATUS_BIN=$WORKDIR/nice-coord
# status_json prints the coordinator's status through the published port, or
# nothing when it does not answer.
status_json() {
	timeout 5 "$STATUS_BIN" status --addr "127.0.0.1:$NICE_GRPC_PORT" --json 2>/dev/null || true
}

S=""           # the latest status JSON ("" when the coordinator did not answer)
FLOOR=0        # the step training may never go below
ERA_COMMITTED=0 # highest committed_steps seen from the running coordinator

field() { jq -r "$1" <<<"$S"; }
cur_step() { field '.step'; }
live_ids() {
	jq -r --argjson gone "$E2E_GONE_STATES" \
		'[.workers[]? | select(.rank >= 0 and (.state as $s | any($gone[]; . == $s) | not)) | .id] | sort | .[]' <<<"$S"
}
live_count() { live_ids | grep -c . || true; }
is_live() { live_ids | grep -qx "$1"; }
digests_agree() { [ "$(field '.digests_agree')" = true ]; }
summary() {
	jq -r '"generation \(.generation) epoch \(.epoch) step \(.step) workers \([.workers[]? | "\(.id)/\(.state)/\(.rank)"] | join(" "))"
		+ " | \(.samples_per_sec // 0 | floor) samples/s, committed \(.committed_steps), redone \(.redone_steps),"
		+ " last checkpoint \(.last_checkpoint_step), ledger_ok \(.ledger_ok), digests_agree \(.digests_agree)"' <<<"$S"
}

poll() {
	S=$(status_json)
	if [ -z "$S" ] || ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$S"; then
		S=""
		return 0
	fi
	LAST_STATUS=$S
	local f
	for f in generation epoch step workers last_checkpoint_step committed_steps redone_steps ledger_ok digests_agree; do
		jq -e --arg f "$f" 'has($f)' >/dev/null <<<"$S" || fail "status JSON has no \"$f\" field"
	done
	if [ "$(field '.ledger_ok')" != true ]; then
		fail "ledger_ok is false at step $(cur_step): a sample was skipped or used twice"
	fi
	local step committed
	step=$(cur_step)
	committed=$(field '.committed_steps')
	if ((step < FLOOR)); then
		fail "step went back to $step, below $FLOOR: committed steps were lost"
	fi
	FLOOR=$step
	if ((committed < ERA_COMMITTED)); then
		fail "committed_steps went back from $ERA_COMMITTED to $committed while the coordinator kept running"
	fi
	ERA_COMMITTED=$committed
}

now_ms() { date +%s%3N; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# wait_until "what" predicate [args...]: poll until the predicate holds, at most
# E2E_WAIT seconds (and within the whole run's budget).
wait_until() {
	local what=$1
	shift
	local start
	start=$(date +%s)
	while :; do
		poll
		if [ -n "$S" ] && "$@"; then
			return 0
		fi
		local t
		t=$(date +%s)
		if ((t - start >= E2E_WAIT)); then
			fail "timed out after ${E2E_WAIT}s waiting for: $what"
		fi
		if ((t - START_S >= E2E_BUDGET)); then
			fail "the whole run exceeded its budget of ${E2E_BUDGET}s while waiting for: $what"
		fi
		sleep "$POLL"
	done
}

# Predicates.
P0=0
WANT=0
WANT_ID=""
GONE_ID=""
SAME_IDS=""
healthy_cluster() { # WANT live workers, past step P0+E2E_PROGRESS, digests agree
	[ "$(live_count)" -eq "$WANT" ] && (($(cur_step) >= P0 + E2E_PROGRESS)) && digests_agree
}
dropped_and_going() { healthy_cluster && ! is_live "$GONE_ID"; }
joined_and_going() { healthy_cluster && is_live "$WANT_ID"; }
reattached_and_going() { healthy_cluster && [ "$(live_ids | tr '\n' ' ')" = "$SAME_IDS" ]; }
coordinator_answers() { true; }
CKPT_MIN=0
checkpointed() { (($(field '.last_checkpoint_step') >= CKPT_MIN)); }

# Containers started outside compose (step 2b), removed at the end.
INTRUDERS=()
REFUSED_TO_START=""
INTRUDERS_SINCE=""
# intruders_refused: the coordinator logged a TLS and a gossip refusal from
# every intruder address, and each intruder logged its failure to attach.
# The logs read are kept in COORD_LOG and INTRUDER_LOGS for the report.
INTRUDER_IPS=()
COORD_LOG=""
declare -A INTRUDER_LOGS=()
intruders_refused() {
	local ip c
	COORD_LOG=$(docker logs --since "$INTRUDERS_SINCE" "$(containers coordinator | head -n 1)" 2>&1)
	for ip in "${INTRUDER_IPS[@]}"; do
		grep "refused a connection at the TLS handshake" <<<"$COORD_LOG" | grep -q "from=$ip:" || return 1
		grep "refused gossip" <<<"$COORD_LOG" | grep -q "from=$ip:" || return 1
	done
	for c in "${INTRUDERS[@]}"; do
		INTRUDER_LOGS[$c]=$(docker logs "$c" 2>&1)
		grep -q "no session with the coordinator" <<<"${INTRUDER_LOGS[$c]}" || return 1
		grep -q "joining cluster failed" <<<"${INTRUDER_LOGS[$c]}" || return 1
	done
}
no_intruder_listed() { ! jq -e '[.workers[]?.id | select(startswith("intruder"))] | length > 0' >/dev/null <<<"$S"; }
refused_and_going() { no_intruder_listed && intruders_refused && healthy_cluster; }

# A phase checks that, with one coordinator running throughout, each step was
# committed once: committed_steps and step advance together.
PHASE_STEP=0
PHASE_COMMITTED=0
PHASE_REDONE=0
phase_begin() {
	PHASE_STEP=$(cur_step)
	PHASE_COMMITTED=$(field '.committed_steps')
	PHASE_REDONE=$(field '.redone_steps')
}
phase_end() { # name
	local ds dc_ dr
	ds=$(($(cur_step) - PHASE_STEP))
	dc_=$(($(field '.committed_steps') - PHASE_COMMITTED))
	dr=$(($(field '.redone_steps') - PHASE_REDONE))
	if ((ds != dc_)); then
		fail "$1: step advanced by $ds but committed_steps by $dc_: a step was lost or committed twice"
	fi
	log "$1: $ds steps committed once each, $dr redone"
}

# fresh_status "before what": a status read just before a fault is injected.
fresh_status() {
	poll
	[ -n "$S" ] || fail "the coordinator did not answer $1"
}

declare -a TIMES=()
record() { # label seconds
	TIMES+=("$(printf '%-44s %6ss' "$1" "$2")")
	log "$1: $2 s"
}

# ---------------------------------------------------------------------------
log "compose: ${COMPOSE[*]}; project $PROJECT; image $NICE_IMAGE; host ports $NICE_GRPC_PORT (gRPC), $NICE_HTTP_PORT (HTTP)"

# 1. Build the images; bring up the coordinator and 4 workers. ---------------
log "step 1: build the images and start the coordinator with $WORKERS workers"
case $E2E_BUILD in
make) make images IMAGE="$NICE_IMAGE" || die "make images failed" ;;
compose) dc build || die "${COMPOSE[*]} build failed" ;;
none) docker image inspect "$NICE_IMAGE" >/dev/null 2>&1 || die "E2E_BUILD=none but there is no image $NICE_IMAGE" ;;
*) die "E2E_BUILD=$E2E_BUILD: want make, compose or none" ;;
esac
tmpc=$(docker create "$NICE_IMAGE" /nice-coord) || die "docker create $NICE_IMAGE failed"
docker cp "$tmpc:/nice-coord" "$STATUS_BIN" >/dev/null || {
	docker rm "$tmpc" >/dev/null
	die "could not copy /nice-coord out of $NICE_IMAGE"
}
docker rm "$tmpc" >/dev/null
# The cluster's credentials, as the README has users write them: compose
# mounts them as secrets (the containers' user gets this group, which may
# read the keys), and status presents them.
"$STATUS_BIN" init --dir "$WORKDIR/secrets" --group-readable || die "nice-coord init --dir $WORKDIR/secrets failed"
NICE_SECRETS=$WORKDIR/secrets NICE_TLS_DIR=$WORKDIR/secrets NICE_SECRETS_GID=$(id -g)
export NICE_SECRETS NICE_TLS_DIR NICE_SECRETS_GID
t0=$(now_ms)
# up waits for the coordinator's healthcheck before it starts the workers.
timeout $((E2E_WAIT + 120)) "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" \
	up -d --scale "worker=$WORKERS" || fail "${COMPOSE[*]} up did not bring the cluster up"
wait_until "the coordinator to answer nice-coord status on 127.0.0.1:$NICE_GRPC_PORT" coordinator_answers

# 2. Committed steps, 4 workers, from the host and from inside. -----------------
log "step 2: wait for committed steps and $WORKERS workers"
P0=0 WANT=$WORKERS
wait_until "$WORKERS live workers, step >= $E2E_PROGRESS and agreeing digests" healthy_cluster
record "start: up to $WORKERS workers training" "$(secs_since "$t0")"
log "status from the host: $(summary)"
inside=$(timeout 30 "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" \
	exec -T coordinator nice-coord status --addr 127.0.0.1:7000 --json) ||
	fail "nice-coord status inside the coordinator container (compose exec) failed"
jq -e '.workers | length >= 1' >/dev/null <<<"$inside" ||
	fail "nice-coord status inside the coordinator container printed no workers: $inside"
log "status from inside the coordinator container: ok"
# The workers reach each other's rings over the Unix sockets in their shared
# volume (NICE_LOCAL_DIR), never over the bridge.
ring_routes=$(dc logs --no-color worker 2>&1 | grep -E 'ring connection' || true)
grep -Eq 'route(=|":")local' <<<"$ring_routes" ||
	fail "no worker logged a ring connection through a peer's socket in the nice-ring volume: $(tail -n 5 <<<"$ring_routes")"
if grep -Eq 'route(=|":")tcp' <<<"$ring_routes"; then
	fail "a worker reached a peer's ring over TCP although both share the nice-ring volume: $(grep -E 'route(=|":")tcp' <<<"$ring_routes" | head -n 3)"
fi
log "ring connections through the nice-ring volume's sockets: $(grep -Ec 'route(=|":")local' <<<"$ring_routes")"
# Health: docker counts every container healthy (their checks run
# `probe --url .../healthz`), and the coordinator and a worker say they are
# ready (/readyz) while training; the coordinator's /metrics, published on
# the host, counts the steps /status shows.
all_healthy() {
	local c h
	for c in $(containers coordinator) $(containers worker); do
		h=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")
		[ "$h" = healthy ] || return 1
	done
}
wait_until "docker to count the coordinator and the $WORKERS workers healthy" all_healthy
coord=$(containers coordinator | head -n 1)
ready=$(timeout 30 docker exec "$coord" /nice-coord probe --url http://127.0.0.1:7080/readyz 2>&1) ||
	fail "the coordinator is not ready while training: $ready"
log "coordinator /readyz: $ready"
w1=$(containers worker --filter status=running | head -n 1)
ready=$(timeout 30 docker exec "$w1" /nice-worker probe --url http://127.0.0.1:7081/readyz 2>&1) ||
	fail "worker $(hostname_of "$w1") is not ready while training: $ready"
log "worker $(hostname_of "$w1") /readyz: $ready"
if command -v curl >/dev/null 2>&1; then
	metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$NICE_HTTP_PORT/metrics") || fail "GET /metrics on the published HTTP port failed"
	committed=$(awk '$1 == "nice_coordinator_steps_committed_total" { print $2 }' <<<"$metrics")
	[ -n "$committed" ] || fail "the coordinator's /metrics has no nice_coordinator_steps_committed_total"
	log "coordinator /metrics: nice_coordinator_steps_committed_total $committed ($(grep -c '^nice_' <<<"$metrics") nice_ series)"
fi

# 2b. Containers without the secrets. ------------------------------------------
log "step 2b: containers on the compose network without the cluster's secrets"
phase_begin
fresh_status "before the intruders knocked"
P0=$(cur_step) WANT=$WORKERS
t0=$(now_ms)
coord=$(containers coordinator --filter status=running | head -n 1)
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "$coord" | grep -m 1 "^$PROJECT") ||
	fail "the coordinator is on no network of project $PROJECT"
intruder_cmd=(/nice-worker --coordinator=coordinator:7000 --join=coordinator:7946 --listen=:7100 --gossip=:7947)
"$STATUS_BIN" init --dir "$WORKDIR/other-secrets" --group-readable >/dev/null || fail "nice-coord init of another cluster failed"
other_mounts=()
for f in ca.crt node.crt node.key gossip.key; do other_mounts+=(-v "$WORKDIR/other-secrets/$f:/run/secrets/$f:ro"); done
# Three at once: without credentials and without --insecure (it must not
# start at all), with --insecure (plaintext), and with another cluster's
# credentials.
INTRUDERS_SINCE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REFUSED_TO_START=${PROJECT}_intruder_none
INTRUDERS=("${PROJECT}_intruder_plain" "${PROJECT}_intruder_foreign")
pids=()
docker run -d --name "$REFUSED_TO_START" --network "$net" "$NICE_IMAGE" "${intruder_cmd[@]}" --id=intruder-none >/dev/null &
pids+=($!)
docker run -d --name "${INTRUDERS[0]}" --network "$net" "$NICE_IMAGE" "${intruder_cmd[@]}" --id=intruder-plain --insecure >/dev/null &
pids+=($!)
docker run -d --name "${INTRUDERS[1]}" --network "$net" --group-add "$NICE_SECRETS_GID" "${other_mounts[@]}" -e NICE_TLS_DIR=/run/secrets \
	"$NICE_IMAGE" "${intruder_cmd[@]}" --id=intruder-foreign >/dev/null &
pids+=($!)
for p in "${pids[@]}"; do
	wait "$p" || fail "could not start the containers without the secrets"
done
rc=$(timeout "$E2E_WAIT" docker wait "$REFUSED_TO_START") || fail "a worker without credentials on a non-loopback address did not exit"
out=$(docker logs "$REFUSED_TO_START" 2>&1)
docker rm -f "$REFUSED_TO_START" >/dev/null 2>&1 || true
REFUSED_TO_START=""
[ "$rc" != 0 ] || fail "a worker without credentials on a non-loopback address exited 0: $out"
grep -q "listens beyond this host and no credentials were given" <<<"$out" ||
	fail "a worker without credentials failed for another reason: $out"
log "without credentials or --insecure, a worker refuses to start (exit $rc): $(tail -n 1 <<<"$out" | cut -c1-160)"
for c in "${INTRUDERS[@]}"; do
	INTRUDER_IPS+=("$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$c")")
done
wait_until "both intruders refused (TLS and gossip) and never listed, $E2E_PROGRESS more steps with $WORKERS workers" refused_and_going
record "intruders refused, training unaffected" "$(secs_since "$t0")"
for ip in "${INTRUDER_IPS[@]}"; do
	log "coordinator: $(grep "refused a connection at the TLS handshake" <<<"$COORD_LOG" | grep -m 1 "from=$ip:" | cut -c1-260)"
	log "coordinator: $(grep "refused gossip" <<<"$COORD_LOG" | grep -m 1 "from=$ip:" | cut -c1-260)"
done
for c in "${INTRUDERS[@]}"; do
	log "intruder: $(grep -m 1 "no session with the coordinator" <<<"${INTRUDER_LOGS[$c]}" | cut -c1-300)"
	log "intruder: $(grep -m 1 "joining cluster failed" <<<"${INTRUDER_LOGS[$c]}" | cut -c1-300)"
done
docker rm -f "${INTRUDERS[@]}" >/dev/null 2>&1 || true
INTRUDERS=()
phase_end "step 2b"
log "$(summary)"

# 3. Kill a worker mid-training. -----------------------------------------------
log "step 3: docker kill a worker mid-training"
phase_begin
victim=$(containers worker --filter status=running | head -n 1)
[ -n "$victim" ] || fail "no running worker container to kill"
victim_id=$(hostname_of "$victim")
fresh_status "before the worker was killed"
P0=$(cur_step) WANT=$((WORKERS - 1)) GONE_ID=$victim_id
t0=$(now_ms)
docker kill "$victim" >/dev/null || fail "docker kill $victim failed"
log "killed worker $victim_id at step $P0"
wait_until "worker $victim_id dropped, $WANT live workers, $E2E_PROGRESS more steps, agreeing digests" dropped_and_going
record "worker killed: training again with $WANT" "$(secs_since "$t0")"
phase_end "step 3"
log "$(summary)"

# 4. Scale back to 4: a new worker joins with the same digest. ------------------
log "step 4: scale back to $WORKERS workers"
phase_begin
docker rm -f "$victim" >/dev/null 2>&1 || true
before=$(containers worker | sort)
P0=$(cur_step) WANT=$WORKERS
t0=$(now_ms)
dc up -d --no-recreate --scale "worker=$WORKERS" || fail "${COMPOSE[*]} up --scale worker=$WORKERS failed"
newcomer=$(comm -13 <(echo "$before") <(containers worker | sort) | head -n 1)
[ -n "$newcomer" ] || fail "scaling to $WORKERS workers started no new worker container"
WANT_ID=$(hostname_of "$newcomer")
wait_until "new worker $WANT_ID live among $WANT, $E2E_PROGRESS more steps, agreeing digests" joined_and_going
record "worker added: training with $WANT" "$(secs_since "$t0")"
phase_end "step 4"
log "$(summary)"

# 5. Kill the coordinator and start it again. ------------------------------------
log "step 5: kill the coordinator and start it again"
CKPT_MIN=$E2E_CHECKPOINT_EVERY
wait_until "a checkpoint at step >= $CKPT_MIN" checkpointed
coord=$(containers coordinator --filter status=running | head -n 1)
[ -n "$coord" ] || fail "no running coordinator container"
fresh_status "before it was killed"
ckpt=$(field '.last_checkpoint_step')
gen=$(field '.generation')
step_at_kill=$(cur_step)
SAME_IDS=$(live_ids | tr '\n' ' ')
t0=$(now_ms)
docker kill "$coord" >/dev/null || fail "docker kill of the coordinator failed"
timeout 30 docker wait "$coord" >/dev/null || fail "the killed coordinator container did not exit"
FLOOR=$ckpt ERA_COMMITTED=0
log "killed the coordinator (last seen at step $step_at_kill, last checkpoint step $ckpt)"
dc start coordinator || fail "${COMPOSE[*]} start coordinator failed"
wait_until "the restarted coordinator to answer" coordinator_answers
resumed=$(cur_step)
((resumed > 0)) || fail "the restarted coordinator began again at step 0: its checkpoint (step $ckpt) was not used"
log "coordinator answering again at step $resumed (last seen at step $step_at_kill before the kill, last checkpoint seen $ckpt)"
P0=$resumed WANT=$WORKERS
wait_until "the same $WORKERS workers reattached, $E2E_PROGRESS more steps, agreeing digests" reattached_and_going
log "generation $gen before the kill, $(field '.generation') now"
record "coordinator restarted: workers reattached" "$(secs_since "$t0")"
log "$(summary)"

# 6. Disconnect a worker from the network, then reconnect it. -------------------
log "step 6: disconnect a worker from the network, then reconnect it"
phase_begin
cut=$(containers worker --filter status=running | head -n 1)
[ -n "$cut" ] || fail "no running worker container to disconnect"
cut_id=$(hostname_of "$cut")
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "$cut" | grep -m 1 "^$PROJECT") ||
	fail "worker $cut_id is on no network of project $PROJECT"
ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$cut")
fresh_status "before the worker was disconnected"
P0=$(cur_step) WANT=$((WORKERS - 1)) GONE_ID=$cut_id
t0=$(now_ms)
docker network disconnect "$net" "$cut" || fail "docker network disconnect $net $cut_id failed"
log "disconnected worker $cut_id ($ip) from $net at step $P0"
wait_until "worker $cut_id dropped, $WANT live workers, $E2E_PROGRESS more steps, agreeing digests" dropped_and_going
record "worker cut off: training again with $WANT" "$(secs_since "$t0")"
P0=$(cur_step) WANT=$WORKERS WANT_ID=$cut_id
t0=$(now_ms)
# Same address if the network allows choosing it (only with a configured
# subnet); otherwise whatever it gives.
if ! docker network connect --ip "$ip" --alias worker "$net" "$cut" 2>/dev/null; then
	docker network connect --alias worker "$net" "$cut" || fail "docker network connect $net $cut_id failed"
	log "reconnected worker $cut_id with address $(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$cut")"
fi
wait_until "worker $cut_id back among $WANT live workers, $E2E_PROGRESS more steps, agreeing digests" joined_and_going
record "worker reconnected: training with $WANT" "$(secs_since "$t0")"
phase_end "step 6"
log "$(summary)"

# 7. Down and up again: resume from the volume's checkpoint. ---------------------
log "step 7: down and up again"
CKPT_MIN=$((resumed + 1))
wait_until "a checkpoint after the coordinator's restart (step >= $CKPT_MIN)" checkpointed
fresh_status "before down"
ckpt=$(field '.last_checkpoint_step')
step_at_down=$(cur_step)
t0=$(now_ms)
dc down || fail "${COMPOSE[*]} down failed"
FLOOR=$ckpt ERA_COMMITTED=0
timeout $((E2E_WAIT + 120)) "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$OVERRIDE" \
	up -d --scale "worker=$WORKERS" || fail "${COMPOSE[*]} up after down did not bring the cluster up"
wait_until "the coordinator to answer after down and up" coordinator_answers
# Every step committed before down must be kept: the new coordinator resumes
# at exactly the step after the last one the ledger (on the volume) shows.
new_inc=$(field '.incarnation')
coord_c=$(containers coordinator | head -n 1)
last_before=$(docker cp "$coord_c:/var/lib/nice/ledger.jsonl" - 2>/dev/null | tar -xO 2>/dev/null |
	jq -s --argjson inc "$new_inc" '[.[] | select(.coordinator != $inc) | .step] | max // -1') ||
	fail "could not read the ledger from the coordinator's volume"
resumed=$(dc logs --no-color coordinator 2>/dev/null | grep 'resuming from checkpoint' | tail -n 1 | sed -n 's/.* step=\([0-9]*\).*/\1/p')
[ -n "$resumed" ] || fail "after down and up the coordinator did not say it resumed from a checkpoint"
((resumed > 0)) || fail "after down and up training started again from step 0: the volume's checkpoint (step $ckpt) was not used"
((resumed == last_before + 1)) || fail "down then up lost steps: the last step committed before down was $last_before, the coordinator resumed at step $resumed"
log "coordinator resumed at step $resumed, exactly after the last step committed before down ($last_before; last seen at step $step_at_down, last checkpoint seen $ckpt)"
P0=$resumed WANT=$WORKERS
wait_until "$WORKERS live workers, $E2E_PROGRESS more steps, agreeing digests" healthy_cluster
record "down and up: training with $WANT" "$(secs_since "$t0")"
log "$(summary)"

# ---------------------------------------------------------------------------
echo
echo "Recovery times:"
printf '  %s\n' "${TIMES[@]}"
echo "Final: $(summary)"
echo "PASS test/e2e/compose.sh ($(($(date +%s) - START_S)) s)"
