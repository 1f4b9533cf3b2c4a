# syntax=docker/dockerfile:1
# Multi-stage build of the offsite image: a Rust build stage, then a small Debian runtime with
# only the binary, CA certificates and time zone data.
#
#   docker build -t offsite .
#   (the add-on images: docker build --build-arg BUILD_ARCH=aarch64 --build-arg BUILD_VERSION=0.1.0 …)
#   docker run -v offsite-data:/data -e OFFSITE_API__TOKEN=$(openssl rand -hex 24) -p 8099:8099 offsite
#
# The API listens on 0.0.0.0 inside the container, so a token is required (start-up says so
# plainly when it is missing).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY tests tests
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin offsite || true
COPY src src
COPY migrations migrations
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin offsite \
    && strip target/release/offsite

FROM debian:bookworm-slim
# The add-on's architecture (aarch64 | amd64) and version (offsite/config.yaml's `version`).
# The publishing workflow (.github/workflows/publish.yml) builds each architecture on its own
# runner and passes both; a plain `docker build` leaves them "unknown" rather than claim one.
ARG BUILD_ARCH=unknown
ARG BUILD_VERSION=unknown
LABEL io.hass.type="addon" \
      io.hass.name="offsite" \
      io.hass.arch="${BUILD_ARCH}" \
      io.hass.version="${BUILD_VERSION}" \
      org.opencontainers.image.version="${BUILD_VERSION}" \
      org.opencontainers.image.source="https://github.com/offsite-backup/offsite"
# CA certificates and zone data are taken current from the release, not pinned: stale ones
# break TLS and schedules.
# The db_dump kind runs pg_dump inside this container (FR-011), whose major must be at least
# the server's: the image ships the PostgreSQL clients (pg_dump + psql) 15 (Debian bookworm's),
# 16 and 17 (from apt.postgresql.org, set up by postgresql-common's own script and key), as
# /usr/lib/postgresql/{15,16,17}/bin. offsite picks the oldest one at least as new as the
# server, so PostgreSQL 9.2 to 17 servers can be dumped.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends \
       postgresql-client-15 postgresql-client-16 postgresql-client-17 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/offsite /usr/local/bin/offsite
COPY jobs /etc/offsite/jobs
ENV OFFSITE_DATA_DIR=/data \
    OFFSITE_JOBS_DIR=/etc/offsite/jobs \
    OFFSITE_API__LISTEN=0.0.0.0:8099
VOLUME /data
EXPOSE 8099
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/offsite"]
CMD ["run"]
