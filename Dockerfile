# syntax=docker/dockerfile:1
# syncd in a container. Build and run: docs/deploy.md ("Docker").
#
#   docker build -t syncd .                                   # runs as UID:GID 10001:10001
#   docker build -t syncd --build-arg SYNCD_UID=1000 --build-arg SYNCD_GID=1000 .

ARG PYTHON_VERSION=3.11

# ---- build: a virtualenv in /opt/syncd holding the dependencies, then syncd itself ----------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/syncd
# Dependencies come from the lock file alone (pinned, hash-checked), before any source is
# copied, so that editing the source reuses this (slow) layer from the cache.
COPY requirements.lock ./
RUN /opt/syncd/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY syncd ./syncd
RUN /opt/syncd/bin/pip install --no-cache-dir --no-deps .

# ---- runtime: the slim interpreter, the virtualenv, a non-root user --------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# The user syncd runs as. Match the owner of the media (or a group that can read it).
ARG SYNCD_UID=10001
ARG SYNCD_GID=10001
ENV PATH=/opt/syncd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNCD_CONFIG=/etc/syncd/config.yaml
# The group may already exist (GID 100 is "users"); reuse it then. The default config watches
# /media and keeps the ledger in /var/lib/syncd; mount a file over it to change anything.
RUN (getent group "${SYNCD_GID}" >/dev/null || groupadd --system --gid "${SYNCD_GID}" syncd) \
    && useradd --system --uid "${SYNCD_UID}" --gid "${SYNCD_GID}" --no-create-home \
        --home-dir /var/lib/syncd --shell /usr/sbin/nologin syncd \
    && install -d -o "${SYNCD_UID}" -g "${SYNCD_GID}" -m 0700 /var/lib/syncd \
    && install -d -m 0755 /etc/syncd /media \
    && printf '%s\n' \
        '# syncd in a container: mount your own config over this file to change it.' \
        'watch:' \
        '  - path: /media' \
        'ledger:' \
        '  path: /var/lib/syncd/ledger.db' \
        'http:' \
        '  listen: 127.0.0.1:9477' \
        > /etc/syncd/config.yaml
COPY --from=build /opt/syncd /opt/syncd
USER ${SYNCD_UID}:${SYNCD_GID}
WORKDIR /var/lib/syncd
# The ledger must outlive the container; the media is mounted from the host (read-only is
# enough unless a post-upload action moves files).
VOLUME ["/var/lib/syncd", "/media"]
# syncd finishes or puts back in-flight uploads on SIGTERM within shutdown.grace_s (20 s):
# give it longer than that with `docker run --stop-timeout 45` / compose stop_grace_period.
STOPSIGNAL SIGTERM
# Probes /healthz on the loopback listener from inside the container (no curl in a slim
# image). SYNCD_HEALTH_URL overrides the URL when http.listen is changed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 \
    CMD ["/opt/syncd/bin/python", "-c", "import os, sys, urllib.request\nurl = os.environ.get('SYNCD_HEALTH_URL', 'http://127.0.0.1:9477/healthz')\ntry:\n    status = urllib.request.urlopen(url, timeout=8).status\nexcept Exception as exc:\n    sys.exit(f'unhealthy: {exc}')\nsys.exit(0 if status == 200 else f'unhealthy: HTTP {status}')"]
# Exec form: syncd is the process that receives SIGTERM (no shell in between).
ENTRYPOINT ["/opt/syncd/bin/syncd"]
CMD ["run"]
