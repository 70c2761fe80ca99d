#!/usr/bin/env bash
# `make compose-test`: the docker-compose stack with 3 agents, checked from outside the containers,
# then faults. Builds the image from host-built binaries on a locally made base (no registry is
# needed), uses its own compose project name and free host ports, and removes every container,
# network and volume it created, whatever happens. Skips (exit 0, reason printed) only when no
# Docker engine answers.
#
#   scripts/compose-test.sh [debug|release]     (binaries from target/<profile>, default debug)
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-debug}"
bin="target/$profile"
started=$(date +%s)
say() { printf '[compose-test %3ds] %s\n' $(($(date +%s) - started)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }

if ! docker info >/dev/null 2>&1; then
    say "skipped: no Docker engine answers ('docker info' fails)"
    exit 0
fi
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    fail "the Docker engine answers but neither 'docker compose' nor 'docker-compose' is installed"
fi

export ZEN_IMAGE="${ZEN_IMAGE:-zen-mesh:local}"
scripts/docker-image.sh "$profile"

# Three distinct free host ports: all three sockets are held until all three are picked, so the
# kernel cannot hand the same port out twice.
read -r ZEN_AGENT_PORT ZEN_BOOTSTRAP_PORT ZEN_ADMIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
export ZEN_AGENT_PORT ZEN_BOOTSTRAP_PORT ZEN_ADMIN_PORT
project="zen-ct-$$"
work=$(mktemp -d /tmp/zen-compose-test.XXXXXX)
compose() { "${compose_cmd[@]}" -p "$project" -f docker-compose.yml "$@"; }

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        say "logs of the failed run (last 30 lines per service):"
        compose logs --no-color --tail 30 2>&1 | sed 's/^/    /' || true
    fi
    compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"
           docker network ls -q --filter "label=com.docker.compose.project=$project"
           docker volume ls -q --filter "label=com.docker.compose.project=$project")
    [[ -z "$left" ]] || { say "cleanup left objects behind: $left"; rc=1; }
    # Anonymous volumes carry no project label; `down -v` removed them with their containers.
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # a stopped test still tears its stack down (via the EXIT trap)

ctl() { compose exec -T control zen-control "$@"; }

# JSON agent list → "spiffe_id status last_seen" lines, for the compose cluster's slots.
agents() {
    ctl agent list --output json | python3 -c '
import json, sys
for a in json.load(sys.stdin):
    if "/cluster/compose/agent/a" in a["spiffe_id"]:
        print(a["spiffe_id"], a["status"], a.get("last_seen") or 0)'
}

# Waits until every compose agent's last heartbeat is at or after $1 (unix seconds), up to $2 s.
wait_heartbeats_after() {
    local since=$1 limit=$2 deadline=$(($(date +%s) + $2))
    while :; do
        local list fresh
        list=$(agents 2>/dev/null || true)
        fresh=$(awk -v t="$since" '$2 == "active" && $3 >= t' <<<"$list" | wc -l)
        [[ $fresh -ge 3 ]] && return 0
        [[ $(date +%s) -lt $deadline ]] || { echo "$list"; return 1; }
        sleep 2
    done
}

container_health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1"; }

wait_healthy() {
    local limit=$1 deadline=$(($(date +%s) + $1)) c status bad
    while :; do
        bad=""
        for c in $(compose ps -q); do
            status=$(container_health "$c")
            case "$status" in
                healthy) ;;
                running) ;;  # no healthcheck (the pod holder)
                exited) [[ $(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.ExitCode}}' "$c") == "init 0" ]] || bad+=" $c:exited" ;;
                *) bad+=" $(docker inspect -f '{{.Name}}' "$c"):$status" ;;
            esac
        done
        [[ -z "$bad" ]] && return 0
        [[ $(date +%s) -lt $deadline ]] || { echo "not healthy after ${limit}s:$bad"; return 1; }
        sleep 2
    done
}

# zen-agent request from the host through the published agent port: prints the status code.
host_request() {
    local out
    out=$(timeout 20 "$bin/zen-agent" request --dir "$work/host-agent" "$@" 2>&1) || true
    printf '%s\n' "$out" >"$work/last-response"
    awk 'NR == 1 {print $1}' <<<"$out"
}
last_response() { tr '\n' ' ' <"$work/last-response" | cut -c1-300; }

say "up: pod, control, init, proxy and 3 agents (project $project, agent port $ZEN_AGENT_PORT)"
compose up -d --scale agent=3 >/dev/null 2>&1 || { compose up -d --scale agent=3; fail "compose up"; }
wait_healthy 180 || fail "services not healthy"
say "all services healthy"
proxy_enrollment() {
    ctl agent list --output json | python3 -c '
import json, sys
print(next((a["status"] for a in json.load(sys.stdin) if a["spiffe_id"] == "spiffe://zen.local/proxy/compose"), "absent"))'
}
# The proxy confirms its enrollment through its own agent listener once its key has reached it.
for _ in $(seq 1 30); do
    proxy_status=$(proxy_enrollment)
    [[ $proxy_status == active ]] && break
    sleep 1
done
[[ $proxy_status == active ]] || fail "the proxy's own enrollment is $proxy_status after 30 s, want active (confirmed)"
say "the proxy enrolled and confirmed its own SVID (spiffe://zen.local/proxy/compose)"

t0=$(date +%s)
wait_heartbeats_after "$t0" 60 || fail "3 agents enrolled and heartbeating"
say "3 agents enrolled and heartbeating: $(agents | awk '{print $1}' | sed 's#.*/##' | tr '\n' ' ')"

# An identity for the host, enrolled through the published bootstrap port.
ctl cluster set-desired-state --cluster compose --file /dev/stdin <<<'{"replicas": 3}' >/dev/null
token=$(ctl token create --spiffe-id spiffe://zen.local/cluster/compose/agent/host --ttl 10m)
token_id=$(awk '$1 == "token_id:" {print $2}' <<<"$token")
token_secret=$(awk '$1 == "secret:" {print $2}' <<<"$token")
compose exec -T control cat /var/lib/zen-control/bundle.pem >"$work/bundle.pem"
ZEN_TOKEN_SECRET="$token_secret" "$bin/zen-agent" enroll \
    --server "https://localhost:$ZEN_BOOTSTRAP_PORT" --agent-server "https://localhost:$ZEN_AGENT_PORT" \
    --token-id "$token_id" --spiffe-id spiffe://zen.local/cluster/compose/agent/host \
    --ca-file "$work/bundle.pem" --out "$work/host-agent" >/dev/null || fail "host enrollment"
url="https://localhost:$ZEN_AGENT_PORT/agent/v1/clusters/compose/desired-state"
[[ $(host_request GET "$url") == 200 ]] || fail "signed request through :$ZEN_AGENT_PORT not accepted: $(last_response)"
[[ $(host_request --unsigned GET "$url") == 401 ]] || fail "unsigned request not refused with 401: $(last_response)"
say "signed request accepted (200), unsigned refused (401) through the published port"

compose exec -T --index 1 agent bash -c 'exec 3<>/dev/tcp/pod/9443' || fail "agent cannot reach the proxy"
if compose exec -T --index 1 agent bash -c 'exec 3<>/dev/tcp/pod/8081' 2>/dev/null; then
    fail "an agent container reached control's API on pod:8081"
fi
say "agent containers reach the proxy (pod:9443) but not control's API (pod:8081)"

# Fault 1: control stopped — the proxy stays up and says upstream_unavailable without hanging.
stopped_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
compose stop -t 5 control >/dev/null 2>&1
t=$(date +%s%N)
code=$(host_request GET "$url")
ms=$((($(date +%s%N) - t) / 1000000))
[[ $code == 502 || $code == 503 ]] || fail "with control stopped: status $code, want 502/503: $(last_response)"
[[ $ms -lt 10000 ]] || fail "with control stopped the proxy took ${ms} ms to answer"
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ZEN_ADMIN_PORT/readyz") == 200 ]] \
    || fail "proxy not ready while control is down"
say "control stopped: proxy answers $code upstream_unavailable in ${ms} ms and stays ready"
sleep 8
# Only what the agents logged since control stopped (not piped into grep -q: pipefail + SIGPIPE).
agent_logs=$(compose logs --no-color agent 2>&1 | awk -v t="$stopped_at" '{ for (i = 1; i <= NF; i++) if ($i ~ /^20[0-9][0-9]-/) { if (substr($i, 1, 20) >= t) print; break } }')
grep -qE 'mesh unavailable.*retry_in' <<<"$agent_logs" \
    || fail "agents do not log a backoff while control is down"
say "agents back off while control is down"

# Fault 2: the proxy restarted while control is down serves from its state cache: a signed request
# passes every check (identity, signature, key from the cache) and only then meets the missing
# upstream; an unsigned one is still refused.
compose restart -t 5 proxy >/dev/null 2>&1
wait_for_proxy() {
    local deadline=$(($(date +%s) + 30))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ZEN_ADMIN_PORT/readyz") == 200 ]]; do
        [[ $(date +%s) -lt $deadline ]] || return 1
        sleep 1
    done
}
wait_for_proxy || fail "proxy restarted with control down is not ready (state cache unused?)"
code=$(host_request GET "$url")
[[ $code == 502 || $code == 503 ]] || fail "proxy restarted with control down: signed request got $code, want 502/503 after the checks: $(last_response)"
[[ $(host_request --unsigned GET "$url") == 401 ]] || fail "proxy restarted with control down: unsigned not refused: $(last_response)"
say "proxy restarted with control down: ready from its cache, signed → $code (checks passed), unsigned → 401"

# Recovery: control back → agents heartbeat again with no operator action.
compose start control >/dev/null 2>&1
t1=$(date +%s)
wait_heartbeats_after "$t1" 90 || fail "agents did not recover after control came back"
[[ $(host_request GET "$url") == 200 ]] || fail "signed request after control came back: $(last_response)"
say "control back: all 3 agents heartbeat again after $(($(date +%s) - t1)) s"

# Fault 3: the agents' network cut from the pod, then restored.
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(compose ps -q pod)" | awk '{print $1}')
pod=$(compose ps -q pod)
docker network disconnect "$net" "$pod"
tcut=$(date +%s)
sleep 12
# Heartbeats every 5 s: none may have arrived while the pod was unreachable (else nothing was cut).
during=$(agents | awk -v t="$((tcut + 1))" '$3 > t' | wc -l)
[[ $during -eq 0 ]] || fail "$during agent(s) heartbeated while their network was disconnected from the pod"
docker network connect --alias pod "$net" "$pod"
t2=$(date +%s)
wait_heartbeats_after "$t2" 90 || fail "agents did not recover after the network came back"
[[ $(host_request GET "$url") == 200 ]] || fail "published port after the network came back: $(last_response)"
say "network cut for 12 s (no heartbeat got through) and restored: agents heartbeat again after $(($(date +%s) - t2)) s"

say "PASS in $(($(date +%s) - started)) s"
