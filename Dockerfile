# The coordinator image: `tandem serve`, configured by environment
# (DATABASE_URL, TANDEM_LISTEN, ... see README's configuration table).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tandem-coordinator --bin tandem

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tandem /usr/local/bin/tandem
ENV TANDEM_LISTEN=0.0.0.0:7070
EXPOSE 7070
USER nobody
ENTRYPOINT ["tandem"]
CMD ["serve"]
