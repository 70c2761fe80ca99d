#!/usr/bin/env bash
# Builds the zen-mesh runtime image from binaries already built on this host, on the locally made
# base image (scripts/docker-base.sh), so that no stage pulls anything.
#
#   scripts/docker-image.sh [debug|release]   (default: debug, what `make test` builds)
# Env: ZEN_IMAGE (default zen-mesh:local), ZEN_BASE_IMAGE (default zen-base:bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-debug}"
image="${ZEN_IMAGE:-zen-mesh:local}"
base="${ZEN_BASE_IMAGE:-zen-base:bookworm}"
bins=(zen-proxy zen-control zen-agent)

for b in "${bins[@]}"; do
    [[ -x "target/$profile/$b" ]] || {
        echo "docker-image: target/$profile/$b missing; run: cargo build $([[ $profile == release ]] && echo --release) --bins" >&2
        exit 1
    }
done
docker image inspect "$base" >/dev/null 2>&1 || scripts/docker-base.sh

ctx="target/docker-context"
rm -rf "$ctx" && mkdir -p "$ctx/bin"
for b in "${bins[@]}"; do
    # Debug info is most of a debug binary's size and nothing the container needs.
    objcopy --strip-debug "target/$profile/$b" "$ctx/bin/$b"
done
docker build --quiet --target prebuilt --build-arg "RUNTIME_BASE=$base" -t "$image" -f Dockerfile "$ctx" >/dev/null
echo "docker-image: built $image from target/$profile on $base"
