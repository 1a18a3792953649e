# Confab's commands. `make run` and `make test` work on a fresh Debian machine: they install what is missing.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(shell npm prefix -g 2>/dev/null)/bin:$(PATH)

.PHONY: run test setup setup-test build unit e2e bench bench-smoke lint fmt watch clean-site image image-test

## Build the release and serve it on http://127.0.0.1:3000 (embedded defaults).
run: setup build
	LEPTOS_SITE_ROOT=target/site LEPTOS_HASH_FILES=true LEPTOS_ENV=PROD ./target/release/confab

## Every test: unit and integration (real server, real WebSocket clients), then end-to-end in headless Chromium.
test: setup-test unit build e2e bench-smoke

setup:
	bash .ci/setup

setup-test:
	bash .ci/setup test

## The release server binary and the site (WASM, JS, CSS, assets) in target/site.
build:
	cargo leptos build --release --precompress

## CONFAB_TEST_DATABASE_URL picks the PostgreSQL for the scale-out tests; by default .ci/postgres finds or
## starts one (and says loudly when it cannot, and those tests skip).
unit:
	CONFAB_TEST_DATABASE_URL="$${CONFAB_TEST_DATABASE_URL:-$$(bash .ci/postgres)}" cargo test --features load

e2e:
	export CONFAB_TEST_DATABASE_URL="$${CONFAB_TEST_DATABASE_URL:-$$(bash .ci/postgres)}"; cd end2end && npx playwright test

## The benchmark scenarios (a)–(k), and (r), (s) and (t) against the raw reference, on the release build; report in target/bench/ (README "Performance").
## Then the privacy walk's long mode: thousands of random steps instead of `make test`'s 60.
bench: setup-test build
	cargo build --release --features load --bin confab-load --bin confab-raw
	./target/release/confab-load bench --out target/bench
	CONFAB_PRIVACY_STEPS=3000 CONFAB_TEST_DATABASE_URL="$${CONFAB_TEST_DATABASE_URL:-$$(bash .ci/postgres)}" \
		cargo test --features load --lib random_walk -- --nocapture

## Seconds long, a few hundred clients: the tool works end to end and nothing is lost or duplicated. No
## timing is judged (the debug generator is enough for that).
bench-smoke: build
	cargo build --features load --bin confab-load --bin confab-raw
	./target/debug/confab-load bench --quick --raw target/debug/confab-raw --out target/bench-smoke

## Formatting and clippy (-D warnings) for both the server and the wasm32 build.
lint: setup
	cargo fmt --all -- --check
	cargo clippy --features load --all-targets -- -D warnings
	cargo clippy --features hydrate --lib --target wasm32-unknown-unknown -- -D warnings

fmt:
	cargo fmt --all

## Development: rebuilds and reloads the page on every change, serving http://127.0.0.1:3000.
watch: setup
	cargo leptos watch

## The container image (the Dockerfile, as Fly.io builds it), with docker where its engine runs, else podman.
## IMAGE names the tag; IMAGE_BUILD_FLAGS adds to the build command (for example --network host).
CONTAINER ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE ?= localhost/confab:local
IMAGE_BUILD_FLAGS ?=
image:
	$(CONTAINER) build $(IMAGE_BUILD_FLAGS) -t $(IMAGE) .

## Runs the built image as Fly.io does (port 8080 on the host network, a host directory as /data, its own
## user, a read-only root) and tests it in Chromium: end2end/image.config.ts. Not part of `make test`: a
## clean image build takes about half an hour on 2 cores.
image-test: setup-test image
	export CONFAB_CONTAINER=$(CONTAINER) CONFAB_IMAGE=$(IMAGE) \
	  CONFAB_TEST_DATABASE_URL="$${CONFAB_TEST_DATABASE_URL:-$$(bash .ci/postgres)}"; \
	  cd end2end && npx playwright test --config image.config.ts
