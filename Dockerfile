# syntax=docker/dockerfile:1
# rotor: the daemon (default) and rotor-agent (--entrypoint rotor-agent), from one image.
#   docker build -t rotor .
#   docker run --rm -v rotor-data:/var/lib/rotor rotor keygen /var/lib/rotor
#   docker run -d --name rotor -v rotor-data:/var/lib/rotor -v rotor-sockets:/run/rotor \
#     -e ROTOR_REPO=git@host:platform/secrets.git rotor
# See "Deployment" in docs/operations.md (non-root vs. root, agents on other hosts, rotor-agent).

FROM node:20-bookworm-slim AS build
WORKDIR /src
# Dependencies first (cached while package*.json stay the same). --ignore-scripts: "prepare"
# would build before the sources are copied (esbuild's install script only checks its binary).
COPY package.json package-lock.json ./
COPY agent/package.json agent/
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json LICENSE README.md ./
COPY schemas/ schemas/
COPY scripts/ scripts/
COPY src/ src/
COPY agent/ agent/
# The release tarballs (no dependencies: everything bundled); no single executables in an image.
RUN npm run build && node scripts/release.mjs --out /release --no-sea

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
COPY --from=build /release/ /tmp/release/
RUN npm install -g --offline --no-audit --no-fund /tmp/release/rotor-*.tgz /tmp/release/rotor-agent-*.tgz \
 && rm -rf /tmp/release /root/.npm
ENV NODE_ENV=production \
    ROTOR_DATA_DIR=/var/lib/rotor \
    ROTOR_SOCKET_DIR=/run/rotor
USER rotor
# Keys, encrypted state, clone, admin.sock / the consumer sockets (share it with the consumers).
VOLUME ["/var/lib/rotor", "/run/rotor"]
# Nothing exposed: the agent API (7700) and metrics (9464) listen on 127.0.0.1 by default.
# For agents on other hosts: -e ROTOR_AGENT_LISTEN=0.0.0.0:7700 -p 7700:7700, with a certificate
# (-e ROTOR_AGENT_TLS_CERT=FILE -e ROTOR_AGENT_TLS_KEY=FILE, mounted read-only; see docs/security.md).
# For a Prometheus in another container: -e ROTOR_METRICS_LISTEN=0.0.0.0:9464 -e ROTOR_METRICS_HOST=rotor
# (the name it scrapes by; other Host headers get 421 HOST_NOT_ALLOWED).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rotor"]
CMD ["daemon"]
