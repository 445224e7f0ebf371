# syntax=docker/dockerfile:1
#
# Lockstep in one container: `lockstep serve` (CalDAV at /dav/, the API, webhooks,
# the admin panel and the sync workers) on port 5232, data in the /data volume.
#
#   docker build -t lockstep .
#   docker run -d --name lockstep -p 5232:5232 -v lockstep-data:/data lockstep
#   docker exec -it lockstep lockstep tech add mike --name "Mike" --email mike@example.com --tz America/Chicago
#
# Configure with LOCKSTEP_<SECTION>_<KEY> variables (e.g. LOCKSTEP_DATABASE_URL,
# LOCKSTEP_SERVER_TRUST_FORWARDED=true behind a proxy) or a config file mounted
# and named by LOCKSTEP_CONFIG. See docs/deploy.md.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data directory; the server never runs as root.
RUN groupadd --system --gid 10001 lockstep \
 && useradd --system --uid 10001 --gid lockstep --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin lockstep \
 && mkdir -p /data \
 && chown lockstep:lockstep /data \
 && chmod 0750 /data

WORKDIR /usr/src/lockstep

# Runtime dependencies first, straight from pyproject.toml (no test extras), so this
# layer is rebuilt only when the dependency list changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then Lockstep itself: a regular (non-editable) `pip install .`.
COPY . ./
RUN pip install --no-deps . \
 && pip check \
 && rm -rf build ./*.egg-info

# The data directory (SQLite database, generated secret.key); the config path is
# optional and only read when LOCKSTEP_CONFIG names a file.
ENV LOCKSTEP_DATA=/data \
    LOCKSTEP_SERVER_HOST=0.0.0.0
VOLUME ["/data"]
WORKDIR /data
USER lockstep:lockstep
EXPOSE 5232

# No curl in the slim image: Python asks /healthz (200 once the database answers).
# It reads the same configuration as the server, so a changed port or TLS
# (LOCKSTEP_SERVER_TLS_CERT) is followed; the certificate is not checked on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request; from server.config import load_config; c = load_config(); s = 'https' if c.get('server', 'tls_cert') else 'http'; urllib.request.urlopen(f\"{s}://127.0.0.1:{c.get('server', 'port')}/healthz\", timeout=4, context=ssl._create_unverified_context())"]

# `docker stop` sends SIGTERM: the server finishes in-flight requests and exits.
CMD ["lockstep", "serve"]
