# ygg-agent in a container. Build: docker build -t ygg-agent .
# Run:   docker run --rm --network host -v /etc/ygg-agent:/etc/ygg-agent:ro ygg-agent
# The image carries the example config and plugins; mount your own folder
# over /etc/ygg-agent (config file and its plugins/ folder).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release -p ygg-agent --bin ygg-agent \
    && scripts/build-plugins --examples --install config/plugins

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/ygg-agent --create-home ygg
COPY --from=build /src/target/release/ygg-agent /usr/local/bin/ygg-agent
COPY --from=build /src/config/agent.yaml /etc/ygg-agent/agent.yaml
COPY --from=build /src/config/plugins/*.wasm /etc/ygg-agent/plugins/
USER ygg
# Compiled plugins are cached here (~/.cache/ygg-agent/plugins).
ENV HOME=/var/lib/ygg-agent
# SIGTERM: deregister, revoke the lease, exit 0 within shutdownTimeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ygg-agent"]
CMD ["run", "--config", "/etc/ygg-agent/agent.yaml"]
