# Build stage: compile Estuary (RocksDB's C++ included) in release mode.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev mold \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin estuary \
 && cp target/release/estuary /estuary

# Runtime stage: the binary, CA certificates, a non-root user, data in a volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data estuary \
 && mkdir -p /data && chown estuary /data
COPY --from=build /estuary /usr/local/bin/estuary
USER estuary
WORKDIR /data
VOLUME /data
ENV ESTUARY_ADDRESS=0.0.0.0 \
    ESTUARY_PORT=8008 \
    ESTUARY_DATABASE_PATH=/data/db
EXPOSE 8008
ENTRYPOINT ["/usr/local/bin/estuary"]
