# syntax=docker/dockerfile:1
# One image with all four binaries (ingest, worker, hookctl, console); docker-compose.yml picks
# the command per service.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY ingest ingest
COPY worker worker
COPY hookctl hookctl
COPY testkit testkit
COPY e2e e2e
COPY bench bench
COPY console console
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ingest --bin worker --bin hookctl --bin console \
 && mkdir -p /out \
 && cp target/release/ingest target/release/worker target/release/hookctl target/release/console /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home app
COPY --from=build /out/ /usr/local/bin/
USER app
ENV INGEST_ADDR=0.0.0.0:3000 \
    WORKER_ADDR=0.0.0.0:9090
EXPOSE 3000 9090
CMD ["ingest"]
