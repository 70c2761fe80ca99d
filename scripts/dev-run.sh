#!/usr/bin/env bash
# `make run`: build, start zen-control + zen-proxy on the dev defaults (state under .zen/dev/), enroll a
# demo agent, show one accepted and one refused request, then keep the stack up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=.zen/dev
BIN=target/debug
CONTROL_CFG=config/dev/control.yaml
PROXY_CFG=config/dev/proxy.yaml
PROXY_ID=spiffe://zen.local/proxy/dev
CLUSTER=demo
AGENT_ID=spiffe://zen.local/cluster/$CLUSTER/agent/a1
PORTS=(9443 8443 9901 8081 9902)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'make run: %s\n' "$*" >&2; exit 1; }

# Refuse before starting anything when a port of the stack is taken.
for port in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use (the dev stack needs ${PORTS[*]}); stop whatever holds it and retry"
  fi
done

say "building"
cargo build --workspace --bins --quiet

mkdir -p "$DEV"
chmod 700 .zen "$DEV"
PIDS=()
stop() {
  trap - INT TERM EXIT
  if [ "${#PIDS[@]}" -gt 0 ]; then
    echo; echo "stopping ${PIDS[*]}"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_ready() { # name url pid
  for _ in $(seq 1 150); do
    kill -0 "$3" 2>/dev/null || { tail -20 "$DEV/$1.log" >&2; die "$1 exited during start (log: $DEV/$1.log)"; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$2" || true)" = 200 ] && return 0
    sleep 0.2
  done
  tail -20 "$DEV/$1.log" >&2
  die "$1 did not become ready at $2 (log: $DEV/$1.log)"
}

say "starting zen-control (data dir $DEV/control)"
"$BIN/zen-control" serve --config "$CONTROL_CFG" >>"$DEV/control.log" 2>&1 &
PIDS+=($!)
wait_ready control http://127.0.0.1:9902/readyz "$!"

# True when the certificate file is missing or expires within $2 seconds.
expiring() { [ ! -s "$1" ] || ! openssl x509 -checkend "$2" -noout -in "$1" >/dev/null 2>&1; }

if expiring "$DEV/proxy/tls.crt" 43200; then
  say "issuing the proxy's serving SVID ($PROXY_ID)"
  "$BIN/zen-control" ca issue --spiffe-id "$PROXY_ID" --dns localhost --ip 127.0.0.1 --out "$DEV/proxy"
fi
# zen-control (re)writes $DEV/bundle.pem on start and on every CA change (trust_bundle_file): it is the
# bundle the proxy trusts and agents pass to `zen-agent enroll --ca-file`.

say "starting zen-proxy"
"$BIN/zen-proxy" run --config "$PROXY_CFG" >>"$DEV/proxy.log" 2>&1 &
PIDS+=($!)
wait_ready proxy http://127.0.0.1:9901/readyz "$!"

# `zen-agent run` (started below) renews the demo agent's SVID and key while the stack runs; a stack
# left stopped past the SVID's end needs a fresh enrollment, so re-enroll when it is near its end.
if [ ! -s "$DEV/agent/hmac.json" ] || expiring "$DEV/agent/svid.pem" 3600; then
  rm -rf "$DEV/agent"
  say "enrolling a demo agent ($AGENT_ID)"
  token=$("$BIN/zen-control" token create --spiffe-id "$AGENT_ID" --ttl 10m --output json)
  token_id=$(printf '%s' "$token" | sed -n 's/.*"token_id": *"\([^"]*\)".*/\1/p')
  ZEN_TOKEN_SECRET=$(printf '%s' "$token" | sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p') \
    "$BIN/zen-agent" enroll --server https://localhost:8443 --token-id "$token_id" \
      --spiffe-id "$AGENT_ID" --ca-file "$DEV/bundle.pem" --out "$DEV/agent"
fi
printf '{"replicas": 3, "image": "zen/demo:1"}\n' >"$DEV/desired-state.json"
"$BIN/zen-control" cluster set-desired-state --cluster "$CLUSTER" --file "$DEV/desired-state.json" >/dev/null

URL=https://localhost:9443/agent/v1/clusters/$CLUSTER/desired-state
say "accepted: a signed request over mTLS"
echo "\$ zen-agent request --dir $DEV/agent GET $URL"
"$BIN/zen-agent" request --dir "$DEV/agent" GET "$URL"

say "refused: the same request without its signature"
echo "\$ zen-agent request --dir $DEV/agent --unsigned GET $URL"
"$BIN/zen-agent" request --dir "$DEV/agent" --unsigned GET "$URL" || true

say "refused: the demo agent asks for another cluster's desired state"
echo "\$ zen-agent request --dir $DEV/agent GET https://localhost:9443/agent/v1/clusters/other/desired-state"
"$BIN/zen-agent" request --dir "$DEV/agent" GET https://localhost:9443/agent/v1/clusters/other/desired-state || true

say "starting the demo agent's run loop (heartbeat, desired-state polling, SVID and key renewal)"
"$BIN/zen-agent" run --config config/dev/agent.yaml >>"$DEV/agent.log" 2>&1 &
PIDS+=($!)

cat <<MSG

The stack is up (Ctrl-C stops it):
  zen-proxy    agent :9443 (mTLS + HMAC)   bootstrap :8443   admin http://127.0.0.1:9901
  zen-control  API 127.0.0.1:8081 (behind the proxy)     admin http://127.0.0.1:9902
  zen-agent    run loop for $AGENT_ID (config/dev/agent.yaml, log $DEV/agent.log)
  state        $DEV/   (control data: $DEV/control, logs: $DEV/*.log)

Try:
  $BIN/zen-agent request --dir $DEV/agent GET $URL
  $BIN/zen-agent request --dir $DEV/agent POST https://localhost:9443/agent/v1/heartbeat --data '{"version":"1.0","status":"ok"}'
  curl -s localhost:9901/metrics | grep zen_proxy_refusals_total
  $BIN/zen-control agent list
  $BIN/zen-control audit verify
MSG
wait
