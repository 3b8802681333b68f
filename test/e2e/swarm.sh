#!/usr/bin/env bash
# swarm.sh: the cluster on Docker Swarm, end to end, from docker-stack.yml as a user
# deploys it, on a one-node swarm made for the test.
#
#   1. make the swarm (docker swarm init) unless this engine is in one already; build the
#      image (make images) and the cluster's credentials (nice-coord init)
#   2. docker stack deploy: 4 workers training (a small model), ledger exact, digests agree
#   3. docker service scale to 6, then to 2: the ring follows, steps go on
#   4. docker kill a worker's container: the swarm starts a new task, which joins; training
#      goes on with 2 workers, no step lost or repeated
#   5. docker stack rm, the volume removed, and the swarm left if this script made it
#
# Where no Docker engine answers, it says so and exits 0. It must not run while another
# test's compose cluster runs (the swarm's overlay networks and ports).
#
# Settings (environment): E2E_BUILD (make | none, default make), NICE_IMAGE (default
# nice:local), E2E_WAIT (seconds for each wait, default 180), E2E_KEEP=1 (leave the stack
# and the swarm up).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

E2E_BUILD=${E2E_BUILD:-make}
NICE_IMAGE=${NICE_IMAGE:-nice:local}
E2E_WAIT=${E2E_WAIT:-180}
E2E_KEEP=${E2E_KEEP:-0}
STACK=niceswarm$$

log() { printf '[swarm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! command -v docker >/dev/null 2>&1 || ! timeout 20 docker info >/dev/null 2>&1; then
	echo "SKIPPED test/e2e/swarm.sh: no Docker engine answers here, so the swarm end-to-end test did not run."
	exit 0
fi
command -v jq >/dev/null 2>&1 || { echo "FAIL test/e2e/swarm.sh: jq is needed (apt-get install jq)" >&2; exit 1; }

WORKDIR=$(mktemp -d)
MADE_SWARM=0
S="" LAST_STATUS=""

cleanup() {
	local rc=$?
	if [ "$E2E_KEEP" = 1 ]; then
		log "E2E_KEEP=1: leaving stack $STACK up (docker stack rm $STACK; docker volume rm ${STACK}_nice-state)"
		exit "$rc"
	fi
	docker stack rm "$STACK" >/dev/null 2>&1 || true
	# Tasks take their grace period to stop; the volume and network go after them.
	local i
	for i in $(seq 1 60); do
		[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] && break
		sleep 1
	done
	docker volume rm "${STACK}_nice-state" >/dev/null 2>&1 || true
	if [ "$MADE_SWARM" = 1 ]; then
		docker swarm leave --force >/dev/null 2>&1 || true
		log "left the swarm this test made"
	fi
	rm -rf "$WORKDIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

fail() {
	echo >&2
	echo "FAIL test/e2e/swarm.sh: $*" >&2
	if [ -n "$LAST_STATUS" ]; then
		echo "--- last status:" >&2
		jq -c '{phase, generation, step, ring, workers: [.workers[] | {id, state, rank}], ledger_ok, digests_agree, redone_steps}' <<<"$LAST_STATUS" >&2 || true
	fi
	echo "--- services:" >&2
	docker stack ps --no-trunc "$STACK" >&2 2>&1 | head -30 || true
	for svc in coordinator worker; do
		echo "--- last log lines of $svc:" >&2
		docker service logs --tail 20 "${STACK}_$svc" >&2 2>&1 || true
	done
	exit 1
}

case $(docker info --format '{{.Swarm.LocalNodeState}}') in
active) log "this engine is in a swarm already: deploying into it, and leaving it as it is" ;;
inactive)
	docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init failed"
	MADE_SWARM=1
	log "made a one-node swarm"
	;;
*) fail "this engine's swarm state is $(docker info --format '{{.Swarm.LocalNodeState}}'); expected active or inactive" ;;
esac

if [ "$E2E_BUILD" = make ]; then
	log "building the image (make images)"
	make -s images IMAGE="$NICE_IMAGE" >"$WORKDIR/build.log" 2>&1 || { tail -20 "$WORKDIR/build.log" >&2; fail "make images failed"; }
fi
docker image inspect "$NICE_IMAGE" >/dev/null 2>&1 || fail "no image $NICE_IMAGE (build it with make images)"
docker create --name "$STACK-extract" "$NICE_IMAGE" >/dev/null
docker cp "$STACK-extract:/nice-coord" "$WORKDIR/nice-coord" >/dev/null
docker rm "$STACK-extract" >/dev/null
"$WORKDIR/nice-coord" init --dir "$WORKDIR/secrets" >/dev/null

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p=$1
	while port_busy "$p"; do p=$((p + 1)); done
	echo "$p"
}
GRPC=$(pick_port 17200)
HTTP=$(pick_port 17280)

# A small model, so that steps take milliseconds and the faults land mid-training.
cat >"$WORKDIR/small.yml" <<'EOF'
version: "3.8"
services:
  coordinator:
    command: [/nice-coord, serve, --listen=:7000, --http=:7080, --gossip=:7946, --state-dir=/var/lib/nice,
              --epochs=1000, --hidden=32, --layers=1, --batch=256, --checkpoint-every=10]
EOF
log "docker stack deploy $STACK (coordinator on 127.0.0.1:$GRPC)"
NICE_IMAGE=$NICE_IMAGE NICE_SECRETS=$WORKDIR/secrets NICE_GRPC_PORT=$GRPC NICE_HTTP_PORT=$HTTP NICE_WORKERS=4 \
	docker stack deploy -c docker-stack.yml -c "$WORKDIR/small.yml" "$STACK" >"$WORKDIR/deploy.log" 2>&1 ||
	{ cat "$WORKDIR/deploy.log" >&2; fail "docker stack deploy failed"; }

FLOOR=0
poll() {
	S=$(timeout 5 "$WORKDIR/nice-coord" status --addr "127.0.0.1:$GRPC" --tls-dir "$WORKDIR/secrets" --json 2>/dev/null || true)
	if [ -z "$S" ] || ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$S"; then
		S=""
		return 0
	fi
	LAST_STATUS=$S
	[ "$(jq -r .ledger_ok <<<"$S")" = true ] || fail "ledger_ok is false: a sample was skipped or used twice"
	[ "$(jq -r .digests_agree <<<"$S")" = true ] || fail "the replicas' digests disagree"
	local step
	step=$(jq -r .step <<<"$S")
	((step >= FLOOR)) || fail "step went back to $step from $FLOOR: committed steps were lost"
	FLOOR=$step
}
live() { jq -r '[.workers[]? | select(.rank >= 0 and .state == "training")] | length' <<<"$S"; }
live_ids() { jq -r '[.workers[]? | select(.rank >= 0 and .state == "training") | .id] | sort | join(" ")' <<<"$S"; }
summary() { jq -r '"generation \(.generation) step \(.step) ring \(.ring | join(",")) redone \(.redone_steps)"' <<<"$S"; }

# wait_until what predicate: poll until it holds, at most E2E_WAIT seconds.
wait_until() {
	local what=$1 start=$SECONDS
	shift
	while :; do
		poll
		if [ -n "$S" ] && "$@"; then
			log "$what after $((SECONDS - start)) s: $(summary)"
			return 0
		fi
		((SECONDS - start < E2E_WAIT)) || fail "waited ${E2E_WAIT}s for: $what"
		sleep 1
	done
}
training_with() { [ "$(jq -r .phase <<<"$S")" = running ] && [ "$(live)" -eq "$1" ] && [ "$(jq -r '.ring | length' <<<"$S")" -eq "$1" ]; }
past() { (($(jq -r .step <<<"$S") >= $1)); }

wait_until "4 workers training" training_with 4
wait_until "steps going on" past $((FLOOR + 20))

log "docker service scale ${STACK}_worker=6"
docker service scale --detach "${STACK}_worker=6" >/dev/null
wait_until "6 workers training" training_with 6
wait_until "steps going on with 6" past $((FLOOR + 20))

log "docker service scale ${STACK}_worker=2"
docker service scale --detach "${STACK}_worker=2" >/dev/null
wait_until "2 workers training" training_with 2
wait_until "steps going on with 2" past $((FLOOR + 20))

before=$(live_ids)
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_worker" | head -n 1)
[ -n "$victim" ] || fail "no running worker container to kill"
log "docker kill $(docker inspect -f '{{.Config.Hostname}}' "$victim") (one of: $before)"
docker kill "$victim" >/dev/null
replaced() { training_with 2 && [ "$(live_ids)" != "$before" ]; }
wait_until "the swarm's new task training in its place" replaced
wait_until "steps going on after the kill" past $((FLOOR + 20))

poll
log "PASS: $(jq -r '"step \(.step), committed \(.committed_steps), redone \(.redone_steps), generations \(.generations), ledger_ok \(.ledger_ok), digests_agree \(.digests_agree)"' <<<"$S")"
