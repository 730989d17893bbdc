# syntax=docker/dockerfile:1
# rotor: the daemon (default) and rotor-agent, from one image.
#   docker build -t rotor .
#   docker run --rm -v rotor-data:/var/lib/rotor rotor keygen /var/lib/rotor
#   docker run -d --name rotor -v rotor-data:/var/lib/rotor -v rotor-sockets:/run/rotor \
#     -e ROTOR_REPO=git@host:platform/secrets.git rotor
# See "Deployment" in docs/operations.md (non-root vs. root, agents on other hosts, rotor-agent).

FROM node:20-bookworm-slim AS build
WORKDIR /src
# Dependencies first (cached while package*.json stay the same). --ignore-scripts: "prepare"
# would build before the sources are copied; no dependency has an install script.
COPY package.json package-lock.json ./
COPY agent/package.json agent/
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY schemas/ schemas/
COPY src/ src/
COPY agent/ agent/
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm -rf dist/test

FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/*
# A dedicated non-root user. It can give consumer sockets only to its own uid (10001); see docs/operations.md
# "Deployment" for serving consumers of other uids (--user 0 with CAP_CHOWN + CAP_FOWNER).
RUN groupadd --system --gid 10001 rotor \
 && useradd --system --uid 10001 --gid rotor --home-dir /var/lib/rotor --no-create-home --shell /usr/sbin/nologin rotor \
 && install -d -o rotor -g rotor -m 0700 /var/lib/rotor /var/lib/rotor-agent \
 && install -d -o rotor -g rotor -m 0711 /run/rotor
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/schemas/ ./schemas/
COPY --from=build /src/node_modules/ ./node_modules/
COPY --from=build /src/dist/ ./dist/
# rotor-agent: its own package (node_modules/rotor-agent links to it); node /app/agent/dist/main.js.
COPY --from=build /src/agent/package.json ./agent/package.json
COPY --from=build /src/agent/dist/ ./agent/dist/
ENV NODE_ENV=production \
    ROTOR_DATA_DIR=/var/lib/rotor \
    ROTOR_SOCKET_DIR=/run/rotor
USER rotor
# Keys, encrypted state, clone, admin.sock / the consumer sockets (share it with the consumers).
VOLUME ["/var/lib/rotor", "/run/rotor"]
# Nothing exposed: the agent API (7700) and metrics (9464) listen on 127.0.0.1 by default.
# For agents on other hosts: -e ROTOR_AGENT_LISTEN=0.0.0.0:7700 -p 7700:7700.
# For a Prometheus in another container: -e ROTOR_METRICS_LISTEN=0.0.0.0:9464 -e ROTOR_METRICS_HOST=rotor
# (the name it scrapes by; other Host headers get 421 HOST_NOT_ALLOWED).
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/src/cli/main.js"]
CMD ["daemon"]
