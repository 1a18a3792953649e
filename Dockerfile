# Confab: multi-stage build. The build stage uses the same pinned setup script as `make run` and CI
# (.ci/setup with .ci/versions), so tool versions have one source of truth.
FROM rust:1.95-slim-bookworm AS build
# perl: cargo-leptos builds a vendored OpenSSL, whose Configure needs the full perl (the slim image has only
# perl-base). The test `the_image_build_stage_installs_what_the_setup_needs` keeps this list honest.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm make ca-certificates perl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Tools first, so this layer is cached until the pins or the lock file change.
COPY .ci ./.ci
COPY Cargo.toml Cargo.lock ./
RUN bash .ci/setup
# Dependencies next, in a layer of their own: built against stand-in sources (.ci/dependency-stubs) with the
# same command and flags as the real build, so a change to the code alone starts from here. The stand-ins'
# own output goes, or its hashed bundle would end up in the site.
RUN bash .ci/dependency-stubs \
    && cargo leptos build --release \
    && rm -rf src style public target/site
COPY . .
# The copied sources may be older than the stand-ins' build: touch them so cargo rebuilds the crate itself.
# The release profile keeps symbols (for profiling); the image does not need them.
RUN find src style public -type f -exec touch {} + \
    && make build \
    && strip target/release/confab

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home confab \
    && mkdir -p /data /app \
    && chown confab /data
# The server reads hash.txt (the bundle's content hashes) from beside its binary.
COPY --from=build /src/target/release/confab /src/target/release/hash.txt /app/
COPY --from=build /src/target/site /app/site
ENV LEPTOS_SITE_ADDR=0.0.0.0:8080 \
    LEPTOS_SITE_ROOT=/app/site \
    LEPTOS_ENV=PROD \
    LEPTOS_HASH_FILES=true \
    CONFAB_DATA_DIR=/data \
    CONFAB_METRICS_ADDR=0.0.0.0:9091 \
    CONFAB_CLIENT_IP_HEADER=Fly-Client-IP \
    RUST_LOG=info
USER confab
EXPOSE 8080 9091
VOLUME /data
CMD ["/app/confab"]
