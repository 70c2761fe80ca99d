# zen-mesh images: zen-proxy, zen-control and zen-agent in one slim runtime image; the compose
# file picks the program per service.
#
# Users (a registry reachable):
#   docker build -t zen-mesh:latest .
# This builds the workspace in a Rust stage and copies only the three binaries onto Debian slim.
#
# Without a registry (CI and the machines here): binaries built on the host, base image made
# locally (scripts/docker-base.sh), nothing pulled:
#   scripts/docker-image.sh          # stages target/<profile>/zen-* and builds --target prebuilt
#
# The `prebuilt` stage comes first on purpose: the classic builder (no BuildKit) runs every stage
# before the chosen target, so a target placed after the Rust stage would try to pull rust:*.

ARG RUNTIME_BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

# --- runtime from host-built binaries (context: a staging dir holding bin/zen-*) -------------
FROM ${RUNTIME_BASE} AS prebuilt
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin zen \
 && mkdir -p /var/lib/zen-control /var/lib/zen-proxy/identity /var/lib/zen-proxy/cache \
             /var/lib/zen-agent /zen/tokens \
 && chown -R zen:zen /var/lib/zen-control /var/lib/zen-proxy /var/lib/zen-agent /zen
COPY bin/zen-proxy bin/zen-control bin/zen-agent /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/zen-control
CMD ["zen-proxy", "--help"]

# --- build stage (context: the repository) ---------------------------------------------------
FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p zen-proxy -p zen-control -p zen-agent --bins \
 && mkdir -p /out && cp target/release/zen-proxy target/release/zen-control target/release/zen-agent /out/

# --- runtime (default target) ---------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin zen \
 && mkdir -p /var/lib/zen-control /var/lib/zen-proxy/identity /var/lib/zen-proxy/cache \
             /var/lib/zen-agent /zen/tokens \
 && chown -R zen:zen /var/lib/zen-control /var/lib/zen-proxy /var/lib/zen-agent /zen
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/zen-control
CMD ["zen-proxy", "--help"]
