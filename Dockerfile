# The image compose.yaml runs the bridge, context service, historian, API and simulator in.
# Runtime dependencies only: the project's [project].dependencies (pyproject.toml), at the versions
# requirements.lock pins (a constraint file here, so its test and lint tools are not installed).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY uns ./uns
COPY bridge ./bridge
COPY services ./services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements.lock \
    && useradd --system --create-home uns \
    && mkdir -p var && chown uns var
# compose.yaml mounts ./sites over this copy; the example shop stays in the image for a quick try.
COPY sites ./sites
USER uns
