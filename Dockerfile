# One image for both Spindle services; the command picks which:
#   docker run IMAGE thread-service    (the default)
#   docker run IMAGE model-service
# Flags after the command go to the service (`docker run IMAGE model-service --help`).
# Settings come from SPINDLE_* variables (README, "Configuration").
# The services log to stdout here (SPINDLE_LOG_STREAM), where container
# platforms collect logs; SPINDLE_LOG_FORMAT=json gives one object a line.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11), venv and pip:
# the official slim image by default; pin it by digest for a reproducible build.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- requirements: pyproject.toml's [project] dependencies, and those of the
# extras named in EXTRAS (comma-separated, e.g. `--build-arg EXTRAS=otel` for
# tracing), as a file whose content alone decides whether the deps stage
# below is rebuilt.
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=""
COPY pyproject.toml /src/
RUN python3 -c 'import os, tomllib; project = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; extras = [name for name in os.environ["EXTRAS"].split(",") if name]; print("\n".join(project["dependencies"] + [dep for name in extras for dep in project["optional-dependencies"][name]]))' > /requirements.txt

# --- deps: the runtime dependencies in a venv. A change of the source, or of
# pyproject.toml outside the dependency list, leaves this layer cached.
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=requirements /requirements.txt /src/requirements.txt
RUN python3 -m venv /opt/spindle \
 && /opt/spindle/bin/pip install -r /src/requirements.txt

# --- app: Spindle itself, without dependencies, under /app-root with the
# venv's layout, so that the final stage can lay it over the deps stage's venv.
FROM deps AS app
# .dockerignore admits only the files the package is built from.
COPY . /src/
RUN /opt/spindle/bin/pip install --no-deps --prefix /app-root /src \
 && ln -s spindle-thread-service /app-root/bin/thread-service \
 && ln -s spindle-model-service /app-root/bin/model-service

# --- runtime: pip and setuptools stay behind, with the build's caches.
FROM deps AS runtime-venv
RUN /opt/spindle/bin/pip uninstall --yes pip setuptools

# --- the image. Its settings come first, so that a source change rebuilds
# only the last layer. Ports: thread-service 50051, model-service 50052.
FROM ${BASE_IMAGE}
RUN useradd --system --user-group --uid 10001 --home-dir /home/spindle --create-home \
      --shell /usr/sbin/nologin spindle \
 && install -d -o spindle -g spindle -m 0750 /var/lib/spindle /home/spindle/.spindle \
 && install -d -o spindle -g spindle -m 0700 /var/lib/spindle-secrets
ENV PATH=/opt/spindle/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPINDLE_THREAD_LISTEN=0.0.0.0:50051 \
    SPINDLE_MODEL_LISTEN=0.0.0.0:50052 \
    SPINDLE_DATA_DIR=/var/lib/spindle \
    SPINDLE_CONFIG_HOME=/home/spindle/.spindle \
    SPINDLE_LOG_STREAM=stdout
USER spindle
WORKDIR /home/spindle
# The services stop gracefully on SIGTERM: health turns NOT_SERVING, in-flight
# calls get SPINDLE_SHUTDOWN_GRACE seconds, interrupted turns are recorded.
# Give `docker stop -t` (compose: stop_grace_period) more than that grace.
STOPSIGNAL SIGTERM
# Without an address the probe finds the service this container runs.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-m", "spindle.healthcheck"]
CMD ["thread-service"]
COPY --from=runtime-venv /opt/spindle /opt/spindle
COPY --from=app /app-root/ /opt/spindle/
