# Siphera: one image for web (uvicorn), worker and beat (Celery). See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=siphera.settings

WORKDIR /app

# An unprivileged user runs every process; only var/ (beat's schedule, audit anchors) is
# writable by it.
RUN groupadd --system siphera \
    && useradd --system --gid siphera --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin siphera

# Dependencies first, so code changes do not reinstall them. Every pinned package ships
# wheels for linux/amd64 and arm64 (psycopg[binary] bundles libpq): no compiler needed.
COPY requirements.txt .
# xmlsec and lxml only from wheels (built from source they disagree on libxml2).
RUN pip install --only-binary=xmlsec,lxml -r requirements.txt

COPY . .

# Static files (portal assets, Swagger UI from drf-spectacular-sidecar) are collected into
# var/static at build time and served by whitenoise: no CDN, no separate web server.
# collectstatic only imports settings; it needs no database and no real secret.
RUN SECRET_KEY=collectstatic-only-not-a-secret python manage.py collectstatic --noinput -v 0 \
    && mkdir -p /app/var/audit-anchors /app/var/key-ring \
    && chown -R siphera:siphera /app/var

USER siphera
EXPOSE 8000

# /ready checks the database, Redis and migrations; compose overrides this for worker/beat.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=4)"

# siphera.serve fixes uvicorn's options (WebSocket limits, heartbeats, no deflate, no access
# log); WEB_WORKERS sets the number of web processes.
CMD ["python", "-m", "siphera.serve", "--host", "0.0.0.0", "--port", "8000"]
