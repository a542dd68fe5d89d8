# syntax=docker/dockerfile:1
# presence-gateway image: build with `docker build -t presence-gateway .`
#
# Stage 1 compiles the dependencies alone (cached until Cargo.toml/Cargo.lock change), then
# the gateway. Stage 2 is distroless: glibc and CA certificates, no shell, non-root user
# 65532. The binary writes nothing to disk, so a read-only root filesystem works as is.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first: a layer that only changes with the lock file.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked -p presence-gateway \
 && rm -rf src loadtest/src
# Then the gateway itself (migrations are embedded at compile time).
COPY src src
COPY migrations migrations
COPY ui ui
COPY loadtest/src loadtest/src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p presence-gateway \
 && cp target/release/presence-gateway /presence-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /presence-gateway /usr/local/bin/presence-gateway
USER 65532:65532
EXPOSE 3000
ENV HOST=0.0.0.0 PORT=3000
ENTRYPOINT ["/usr/local/bin/presence-gateway"]
