# syntax=docker/dockerfile:1
# The taskwire server image: `docker build -t taskwire .` from the repository root.
#
# Stage 1 builds the release binary with cargo (librdkafka and jemalloc are built from
# source: the rust image has the C compiler, make and zlib headers they need). Stage 2 runs
# it in a slim Debian as an unprivileged user. Without configuration the container serves
# the embedded defaults (SQLite in /var/lib/taskwire/data, the in-process Kafka mock);
# deploy/compose.yaml shows the production settings (MariaDB, Kafka, Redis).

# The workspace's rust-version (Cargo.toml).
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied
# out of the cache mount because the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p taskwire-api --bin taskwire \
    && install -m 0755 target/release/taskwire /usr/local/bin/taskwire

FROM debian:bookworm-slim AS runtime
# curl for the HEALTHCHECK; ca-certificates for TLS to managed Kafka, Redis or OTLP endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 taskwire \
    && useradd --system --uid 10001 --gid taskwire --home-dir /var/lib/taskwire --create-home \
       --shell /usr/sbin/nologin taskwire
COPY --from=build /usr/local/bin/taskwire /usr/local/bin/taskwire
USER 10001:10001
WORKDIR /var/lib/taskwire
# Listen on every interface of the container; the embedded SQLite file and development
# secret (embedded mode only) go to the working directory's data/.
ENV TASKWIRE_LISTEN=0.0.0.0:8080 \
    TASKWIRE_DATA_DIR=/var/lib/taskwire/data \
    TASKWIRE_LOG_FORMAT=json
EXPOSE 8080
# Liveness, not readiness: /healthz answers while the process runs, whereas /readyz turns
# 503 while the database or Kafka is away, and the process recovers from that by itself
# (an orchestrator that restarts unhealthy containers must not restart every replica
# during a database outage). deploy/compose.yaml checks /readyz for its status display.
# Assumes port 8080: change it here too if TASKWIRE_LISTEN changes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["taskwire"]
CMD ["serve"]
