#!/bin/bash
# One-shot init service: runs once zen-control is healthy, through its operator socket (shared
# control-data volume). Idempotent: every `docker compose up` runs it again.
#  1. leaves a one-use enrollment token for the proxy's own SVID in the proxy-identity volume
#     (the proxy enrolls with it on its first start, or when its SVID there has expired, and renews
#     the SVID itself afterwards; an unused token expires after an hour);
#  2. publishes the trust bundle agents enroll with (tokens volume, bundle.pem);
#  3. creates one bootstrap token per agent slot not yet claimed (ZEN_AGENT_SLOTS, default 8):
#     tokens/pending/aN.env, which an agent container claims by renaming it into tokens/claimed/.
set -euo pipefail

sock=/var/lib/zen-control/control.sock
tokens=/zen/tokens
slots="${ZEN_AGENT_SLOTS:-8}"
cluster="${ZEN_CLUSTER_ID:-compose}"
ctl() { zen-control --socket "$sock" "$@"; }

umask 077
ctl token create --spiffe-id spiffe://zen.local/proxy/compose --ttl 1h --output json \
    >/var/lib/zen-proxy/identity/.enroll-token.json.tmp
mv -f /var/lib/zen-proxy/identity/.enroll-token.json.tmp /var/lib/zen-proxy/identity/enroll-token.json

mkdir -p "$tokens/pending" "$tokens/claimed"
cp /var/lib/zen-control/bundle.pem "$tokens/.bundle.pem.tmp"
chmod 0644 "$tokens/.bundle.pem.tmp"
mv -f "$tokens/.bundle.pem.tmp" "$tokens/bundle.pem"

# Unclaimed tokens from an earlier run may have expired: replace them.
rm -f "$tokens"/pending/*.env
created=0
for i in $(seq 1 "$slots"); do
    slot="a$i"
    [[ -e "$tokens/claimed/$slot.env" ]] && continue
    id="spiffe://zen.local/cluster/$cluster/agent/$slot"
    out=$(ctl token create --spiffe-id "$id" --ttl 24h)
    token_id=$(awk '$1 == "token_id:" {print $2}' <<<"$out")
    secret=$(awk '$1 == "secret:" {print $2}' <<<"$out")
    [[ -n "$token_id" && -n "$secret" ]] || { echo "init: token create for $id printed no token" >&2; exit 1; }
    printf 'SPIFFE_ID=%s\nTOKEN_ID=%s\nTOKEN_SECRET=%s\n' "$id" "$token_id" "$secret" >"$tokens/pending/.$slot.tmp"
    mv -f "$tokens/pending/.$slot.tmp" "$tokens/pending/$slot.env"
    created=$((created + 1))
done
echo "init: proxy enrollment token ready; $created bootstrap token(s) pending; $(ls "$tokens/claimed" | wc -l) slot(s) claimed"
