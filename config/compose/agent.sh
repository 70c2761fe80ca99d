#!/bin/bash
# Entrypoint of an `agent` replica: enroll once (claiming a bootstrap token the init service left in
# the tokens volume), then `zen-agent run`. The identity lives in the container's own
# /var/lib/zen-agent, so a restarted container keeps it; a recreated one needs a fresh slot
# (`docker compose run --rm init` makes tokens for slots not yet claimed).
set -euo pipefail

dir=/var/lib/zen-agent
tokens=/zen/tokens

if [[ ! -s "$dir/svid.pem" || ! -s "$dir/hmac.json" ]]; then
    # The slot this container claimed before a failed enrollment, else a new one. rename(2) within
    # one volume is atomic: of several replicas starting together, exactly one claims each file.
    claimed=""
    if [[ -s "$dir/slot" ]]; then
        claimed="$tokens/claimed/$(cat "$dir/slot").env"
    else
        for f in "$tokens"/pending/*.env; do
            [[ -e "$f" ]] || continue
            slot=$(basename "$f" .env)
            if mv "$f" "$tokens/claimed/$slot.env" 2>/dev/null; then
                echo "$slot" >"$dir/slot"
                claimed="$tokens/claimed/$slot.env"
                break
            fi
        done
    fi
    if [[ -z "$claimed" || ! -s "$claimed" ]]; then
        echo "agent: no bootstrap token left in $tokens/pending; raise ZEN_AGENT_SLOTS and run" \
             "'docker compose run --rm init'" >&2
        exit 1
    fi
    # Read, never `source`: every replica can write the tokens volume, so the file is data only.
    SPIFFE_ID="" TOKEN_ID="" TOKEN_SECRET=""
    # (split by hand: `IFS== read k v` would drop a base64 secret's trailing '=')
    while IFS= read -r line; do
        case "${line%%=*}" in
            SPIFFE_ID | TOKEN_ID | TOKEN_SECRET) printf -v "${line%%=*}" '%s' "${line#*=}" ;;
        esac
    done <"$claimed"
    [[ -n "$SPIFFE_ID" && -n "$TOKEN_ID" && -n "$TOKEN_SECRET" ]] \
        || { echo "agent: $claimed is not a token file" >&2; exit 1; }
    export ZEN_TOKEN_SECRET="$TOKEN_SECRET"
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if zen-agent enroll --server https://pod:8443 --agent-server https://pod:9443 \
            --token-id "$TOKEN_ID" --spiffe-id "$SPIFFE_ID" \
            --ca-file "$tokens/bundle.pem" --out "$dir"; then
            break
        fi
        [[ $attempt -lt 10 ]] || { echo "agent: enrollment of $SPIFFE_ID failed 10 times" >&2; exit 1; }
        sleep $((attempt * 2))
    done
    unset ZEN_TOKEN_SECRET TOKEN_SECRET
    : >"$claimed"   # the token is spent; do not leave its secret in the shared volume
fi
exec zen-agent run --config /etc/zen/agent.yaml
