# Zen Mesh — build and test entry points. See README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test run deps fmt-check clippy unit build bench compose-test image

## make test — the whole suite: system deps, fmt check, clippy -D warnings, every test in the workspace,
## then the docker-compose stack test (skipped, with the reason printed, when no Docker engine answers).
test: deps fmt-check clippy unit compose-test

## Install the system packages the build needs (pingora's zlib-ng needs cmake) when they are absent.
deps:
	@missing=""; \
	for tool in cmake:cmake cc:build-essential pkg-config:pkg-config openssl:openssl curl:curl; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The end-to-end tests (tests/) start the real binaries, so they are built first.
unit: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

build: deps
	$(CARGO) build --workspace --release

## make compose-test — the compose stack with 3 agents and faults (scripts/compose-test.sh), on an image
## built from this host's debug binaries over a locally made Debian base: nothing is pulled.
compose-test: deps
	$(CARGO) build --workspace --bins
	scripts/compose-test.sh debug

## make image — the runtime image from host-built binaries (no registry needed): zen-mesh:local.
image: deps
	$(CARGO) build --workspace --bins
	scripts/docker-image.sh debug

bench: deps
	$(CARGO) bench -p zen-trust

## make run — build and start the local dev stack (state under .zen/dev/).
run: deps
	@scripts/dev-run.sh
