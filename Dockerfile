# The `weft` binary in a small image. Built by docker-compose.yml.
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weft

FROM debian:trixie-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft /usr/local/bin/weft
COPY deploy/weft.toml /etc/weft/weft.toml
WORKDIR /data
EXPOSE 8080
ENTRYPOINT ["weft"]
CMD ["serve", "--config", "/etc/weft/weft.toml"]
