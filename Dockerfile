# syntax=docker/dockerfile:1
# The Flywheel operator image: `flywheel run` as an unprivileged user on a read-only root file system.
#   docker build -t REGISTRY/flywheel-operator:TAG .
# or, without a Docker engine or a registry: hack/build-image.sh (buildah, a debootstrap base).
# The base is pinned to a Python patch release; pin its digest too in your registry mirror
# (PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: the package and its dependencies in a virtualenv (all dependencies ship wheels) ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/flywheel
# The locked, hash-checked dependencies first (a layer that changes only with the lock), then the
# package itself without resolving anything again.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN /opt/flywheel/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
# Not editable: the package (rules, migrations) is copied into the virtualenv, and pip compiles its
# bytecode here, because the running container cannot write any.
RUN /opt/flywheel/bin/pip install --no-deps .

# --- runtime: the virtualenv only -----------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flywheel-operator" \
      org.opencontainers.image.description="Kubernetes operator that turns incidents into verified remediations" \
      org.opencontainers.image.licenses="Apache-2.0"
# MALLOC_ARENA_MAX: the operator's blocking-I/O threads would each get a malloc arena of their
# own, and the memory of an alert storm would stay spread over them (docs/benchmarks.md).
ENV PATH=/opt/flywheel/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    FLYWHEEL_LOG_FORMAT=json
# A fixed uid/gid, so that the Deployment's runAsUser and fsGroup (10001) match the image.
RUN groupadd --system --gid 10001 flywheel \
    && useradd --system --uid 10001 --gid flywheel --home-dir /var/lib/flywheel --no-create-home \
       --shell /usr/sbin/nologin flywheel \
    && install -d -o flywheel -g flywheel -m 0750 /var/lib/flywheel
COPY --from=build /opt/flywheel /opt/flywheel
# The working directory holds the default SQLite history (a volume in the Deployment).
WORKDIR /var/lib/flywheel
USER 10001:10001
# metrics, Alertmanager intake, Kopf liveness, admission webhooks
EXPOSE 8080 8081 8090 9443
ENTRYPOINT ["flywheel", "run"]
CMD ["--all-namespaces"]
