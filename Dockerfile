# The image compose.yaml builds for the bridge, context and api services.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY uns ./uns
COPY bridge ./bridge
COPY services ./services
COPY sites ./sites
COPY mosquitto ./mosquitto
RUN pip install --no-cache-dir --no-deps . && useradd --system uns && mkdir -p var && chown uns var
USER uns
