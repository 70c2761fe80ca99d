#!/usr/bin/env bash
# Makes the local base image the compose test builds on, where no image registry is reachable:
# a minimal Debian root filesystem from debootstrap, using this machine's configured Debian mirror
# (read from /etc/apt at run time; nothing of it is written into the repository), imported as
# ${ZEN_BASE_IMAGE:-zen-base:bookworm}. Users with a registry do not need this: the Dockerfile's
# default stages start from public images.
#
#   scripts/docker-base.sh          # build unless the image already exists
#   scripts/docker-base.sh --force  # rebuild
set -euo pipefail

image="${ZEN_BASE_IMAGE:-zen-base:bookworm}"
if [[ "${1:-}" != "--force" ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "docker-base: $image already present"
    exit 0
fi

need_root() { [[ $(id -u) -eq 0 ]] || { echo "docker-base: debootstrap needs root" >&2; exit 1; }; }
if ! command -v debootstrap >/dev/null; then
    need_root
    echo "docker-base: installing debootstrap"
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi
need_root

# The mirror and suite this machine's apt uses (deb822 sources first, then the legacy list).
mirror="" suite=""
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    suite=$(awk '/^Suites:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
    read -r mirror suite < <(awk '$1 == "deb" && $2 !~ /security/ {print $2, $3; exit}' /etc/apt/sources.list)
fi
mirror="${mirror:-http://deb.debian.org/debian}"
suite="${suite:-bookworm}"

root=$(mktemp -d /tmp/zen-base.XXXXXX)
log=$(mktemp /tmp/zen-base-log.XXXXXX)
trap 'rm -rf "$root" "$log"' EXIT
echo "docker-base: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$log" 2>&1 || {
    echo "docker-base: debootstrap failed; last lines of its log:" >&2
    tail -20 "$log" >&2
    exit 1
}
# What a runtime image does not need.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "docker-base: imported $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
