# syntax=docker/dockerfile:1
# The `carnet` binary on Debian slim, run as a non-root user. One image for every target:
#   docker build -t carnet:0.1.0 .
#   docker run --rm -p 8080:8080 carnet:0.1.0            # `carnet up`: monolith on SQLite
#   docker run --rm carnet:0.1.0 serve --target contacts --config /etc/carnet/carnet.toml
# The Helm chart (helm/carnet) runs it with `serve --target <target>` and a read-only root
# filesystem; only /var/lib/carnet (node.data_dir) and /tmp need to be writable.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches only speed up rebuilds (BuildKit); the binary leaves the cache
# through the copy.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p carnet-cli \
    && cp target/release/carnet /usr/local/bin/carnet

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 carnet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/carnet --no-create-home \
       --shell /usr/sbin/nologin carnet \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/carnet
COPY --from=builder /usr/local/bin/carnet /usr/local/bin/carnet
USER 10001:10001
WORKDIR /var/lib/carnet
# gRPC (every target) and HTTP (the gateway's REST API).
EXPOSE 50051 8080
ENTRYPOINT ["carnet"]
CMD ["up", "--data-dir", "/var/lib/carnet", "--grpc-addr", "0.0.0.0:50051", "--http-addr", "0.0.0.0:8080"]
