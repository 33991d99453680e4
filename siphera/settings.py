"""Siphera settings. Every value comes from the environment (12-factor) with a safe
development default; the README's configuration table lists each variable."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from siphera import logging as siphera_logging
from siphera.mail_url import email_settings

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
# Known to everyone who reads this file: accepted only with DEBUG on (checked below, once
# SECRET_KEYS is read too).
DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"  # noqa: S105
# `make run` generates a key in $SIPHERA_VAR_DIR/secret_key (default var/) on its first run
# (scripts/run.sh): with SECRET_KEY unset, every process of this checkout (web, worker,
# beat, manage.py) uses that one.
SECRET_KEY_FILE = Path(env("SIPHERA_VAR_DIR") or BASE_DIR / "var") / "secret_key"
SECRET_KEY = env("SECRET_KEY") or (
    SECRET_KEY_FILE.read_text().strip() if SECRET_KEY_FILE.is_file() else DEV_SECRET_KEY
)
# Host validation for org hosts happens against the Domain table (siphera.tenancy);
# ALLOWED_HOSTS is a second, coarse filter an operator may narrow (e.g. ".example.com").
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")
# Origins trusted for form posts besides the request's own: an org host's https:// origin
# is trusted anyway (siphera.middleware.OrgCsrfMiddleware); list only other origins here.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# --- Apps -----------------------------------------------------------------------------
# Shared apps live in the `public` schema: only what is needed to find an org.
SHARED_APPS = [
    "django_tenants",  # schema routing; must come first
    "orgs",  # Org (the tenant) and Domain: looked up by host before any org is known
    "django.contrib.contenttypes",  # needed in every schema by auth/sessions
    "django.contrib.auth",  # password hashing and the user-model machinery
    "django.contrib.staticfiles",  # portal assets, served by whitenoise
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI/Redoc assets shipped locally: no CDN
    "django.contrib.messages",  # flash messages in the portal (no models)
    "channels",
]
# Tenant apps get one copy of their tables per org schema: everything that belongs to an org.
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",  # portal sessions are per org
    "orgs.accounts",  # users, devices, login grants, audit log
    "orgs.sso",  # the org's SAML / OIDC identity provider, sign-ins in flight
    "orgs.scim",  # the org's SCIM tokens, SCIM user data and groups (per org: tenant)
    "messaging",  # key directory, conversations, messages
    "calls",
    "e911",
    "billing",
    "admin_portal",
]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "orgs.Org"
TENANT_DOMAIN_MODEL = "orgs.Domain"
AUTH_USER_MODEL = "accounts.User"
PUBLIC_SCHEMA_URLCONF = "siphera.urls_public"
ROOT_URLCONF = "siphera.urls_tenants"

MIDDLEWARE = [
    "siphera.middleware.HealthMiddleware",  # answers /health and /ready on any Host
    "siphera.middleware.RequestContextMiddleware",  # request id + JSON access log
    "siphera.middleware.TenantMiddleware",  # Host -> org schema (django-tenants)
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "siphera.middleware.OrgCsrfMiddleware",  # Django's, + the org host's https origin
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "siphera.middleware.PortalMessageMiddleware",  # Django's, not on /api/ and /scim/
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # Replaces Django's built-in csrf processor: one random read per token.
                "siphera.csrf.csrf",
            ],
        },
    }
]

ASGI_APPLICATION = "siphera.asgi.application"

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/siphera")
# A DATABASE_URL without a password on a fresh Debian machine: scripts/ensure_services.sh
# gave the local role a generated one and keeps it in $SIPHERA_VAR_DIR/pgpass, libpq's
# password file, which every process of the checkout reads unless PGPASSFILE names another.
_PGPASS_FILE = SECRET_KEY_FILE.parent / "pgpass"
if not env("PGPASSFILE") and _PGPASS_FILE.is_file():
    os.environ["PGPASSFILE"] = str(_PGPASS_FILE)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
# CONN_MAX_AGE must stay 0 under ASGI (PITFALLS 5).
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"].setdefault("TEST", {})["NAME"] = env("TEST_DATABASE_NAME", "") or None
# Bind parameters on the server and let psycopg prepare a query after this many runs on a
# connection: parsing and planning were half of PostgreSQL's CPU per message. PostgreSQL
# parses a prepared statement again when search_path changes, so one connection serving
# many orgs stays correct (siphera/tests/test_tenancy.py). Empty: client-side binding.
_prepare_threshold = env("DATABASE_PREPARE_THRESHOLD", "5")
if _prepare_threshold:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=int(_prepare_threshold)
    )
# HTTP requests (and Celery tasks) take their connection from a pool in each process
# (Django's psycopg pool) instead of opening a PostgreSQL session each, which cost more
# than the request itself (PITFALLS 5, 26). At most DATABASE_POOL_SIZE at once per process;
# a request that finds none free (or the database unreachable) waits up to
# DATABASE_POOL_TIMEOUT_SECONDS, then gets 503 `database_unavailable`. The WebSocket DB
# threads keep connections of their own (siphera.tenancy); a fast-path request
# (siphera.fast_http) waits as long for one of them. DATABASE_POOL_SIZE=0: no pool.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 8)
DATABASE_POOL_TIMEOUT_SECONDS = float(env("DATABASE_POOL_TIMEOUT_SECONDS", "5"))
if DATABASE_POOL_SIZE > 0:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
        "max_idle": 120,  # seconds: idle connections beyond min_size are closed
    }
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
# Which org a host is and which device a token is are cached in each process, and dropped
# when a change bumps their generation in Redis (siphera.generations): other processes
# notice within GENERATION_CHECK_SECONDS; no entry lives longer than the max age.
GENERATION_CHECK_SECONDS = float(env("GENERATION_CHECK_SECONDS", "1"))
GENERATION_CACHE_MAX_AGE_SECONDS = float(env("GENERATION_CACHE_MAX_AGE_SECONDS", "60"))
# The hottest API requests (a REST send) served without Django's request machinery, on the
# sockets' database threads (siphera.fast_http); off: Django serves them like the rest.
FAST_HTTP = env_bool("FAST_HTTP", True)
# Issue `SET search_path` once per schema switch instead of before every query (the
# connection forgets it on rollback; django-tenants resets its marker then).
TENANT_LIMIT_SET_CALLS = True
# Before each consumer DB call, ask PostgreSQL for `current_schema()` and fail the call
# unless it is the socket's org (siphera.tenancy.tenant_db, PITFALLS 2). One extra round
# trip per call: on in the test suite, off by default.
TENANT_DB_VERIFY_SCHEMA = env_bool("TENANT_DB_VERIFY_SCHEMA", False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, Celery broker, cache, rate limits ---------------------------
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
# Per pool and process (the channel layer's, the rate limits'): a command beyond it waits
# for a free connection, up to the timeout, instead of failing (siphera.channel_layer).
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 100)
REDIS_POOL_TIMEOUT_SECONDS = env_int("REDIS_POOL_TIMEOUT_SECONDS", 20)
CHANNEL_LAYER_PREFIX = env("CHANNEL_LAYER_PREFIX", "siphera")
CHANNEL_LAYERS = {
    "default": {
        # channels-redis with a pool that waits for a free connection (siphera.channel_layer)
        "BACKEND": "siphera.channel_layer.RedisChannelLayer",
        "CONFIG": {
            # socket_timeout=None: redis-py 8 otherwise times out the layer's blocking
            # read after 5 s idle and the socket dies with 1011 (PITFALLS 18). A connect
            # still gives up after 2 s, so an unreachable Redis fails fast instead of
            # hanging requests (siphera.redis_outage).
            "hosts": [{"address": REDIS_URL, "socket_timeout": None, "socket_connect_timeout": 2}],
            "prefix": CHANNEL_LAYER_PREFIX,
            "capacity": 1000,
            "expiry": 60,
        },
    }
}
CACHE_KEY_PREFIX = env("CACHE_KEY_PREFIX", "siphera")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": CACHE_KEY_PREFIX,
    }
}

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "siphera")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep our JSON log lines in workers too
CELERY_TASK_ACKS_LATE = True  # a job killed mid-way is redelivered, not lost
# ... once its message has stayed unacknowledged this long (Redis has no other way to know
# the worker died): keep it above the longest job's run time, or a job still running is
# handed to a second worker too. Jobs are idempotent (docs/operations.md, "Faults").
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_SECONDS", 3600)
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "purge-expired-grants": {
        "task": "orgs.tasks.dispatch_purge_expired_grants",
        "schedule": env_int("PURGE_GRANTS_EVERY_SECONDS", 300),
    },
    # Messages past retention, their queue rows and attachments; never-sent uploads.
    "retention-purge": {
        "task": "messaging.tasks.dispatch_retention_purge",
        "schedule": env_int("RETENTION_PURGE_EVERY_SECONDS", 3600),
    },
}

# --- Auth -------------------------------------------------------------------------------
PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]
# Every path that sets a password runs these (orgs.accounts.passwords): the org policy's
# minimum length, and a local list of breached/common passwords (no network call):
# Django's 20,000 by default, or PASSWORD_BREACHED_LIST (one per line, .gz allowed).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "orgs.accounts.passwords.OrgPolicyLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
if env("PASSWORD_BREACHED_LIST"):
    AUTH_PASSWORD_VALIDATORS[1]["OPTIONS"] = {"password_list_path": env("PASSWORD_BREACHED_LIST")}
# Password-reset links (orgs.services.passwords): lifetime, and requests per window per
# client IP and per username/e-mail asked for (429 beyond).
PASSWORD_RESET_TTL_SECONDS = env_int("PASSWORD_RESET_TTL_SECONDS", 1800)
PASSWORD_RESET_RATE_PER_IP = env_int("PASSWORD_RESET_RATE_PER_IP", 20)
PASSWORD_RESET_RATE_PER_ACCOUNT = env_int("PASSWORD_RESET_RATE_PER_ACCOUNT", 3)
PASSWORD_RESET_RATE_WINDOW_SECONDS = env_int("PASSWORD_RESET_RATE_WINDOW_SECONDS", 3600)

# --- Email (siphera/mail_url.py) --------------------------------------------------------------
# console:// prints mails (development); smtp://, smtp+tls://, smtps:// send them. Mails are
# rendered from templates/email/, sent by the Celery worker with retries (orgs.services.mail).
EMAIL_URL = env("EMAIL_URL", "console://")
globals().update(email_settings(EMAIL_URL))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "Siphera <noreply@localhost>")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20)
EMAIL_SUBJECT_PREFIX = ""

# --- Profiles (orgs.services.profiles) ---------------------------------------------------
# Largest avatar upload, and the most pixels an upload may declare (a decompression bomb's
# header is refused before it is decoded); avatars are stored as AVATAR_SIZE px squares.
AVATAR_MAX_BYTES = env_int("AVATAR_MAX_BYTES", 2 * 1024 * 1024)
AVATAR_MAX_PIXELS = env_int("AVATAR_MAX_PIXELS", 40_000_000)
AVATAR_SIZE = 256
# Portal sessions load their user through a per-process cache (orgs.services.auth);
# Django's ModelBackend stays for sessions started before it.
AUTHENTICATION_BACKENDS = [
    "orgs.services.auth.PortalUserBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/portal/login"
LOGIN_GRANT_TTL_SECONDS = env_int("LOGIN_GRANT_TTL_SECONDS", 300)
# Single sign-on (orgs.sso): how long a sign-in may stay at the IdP; the private-use URI
# schemes apps may ask the one-time code to be sent to (loopback http is always allowed);
# how far apart the IdP's clock and ours may be.
SSO_REQUEST_TTL_SECONDS = env_int("SSO_REQUEST_TTL_SECONDS", 600)
SSO_CLIENT_REDIRECT_SCHEMES = env_list("SSO_CLIENT_REDIRECT_SCHEMES", "siphera")
SAML_CLOCK_SKEW_SECONDS = env_int("SAML_CLOCK_SKEW_SECONDS", 120)
# Largest SCIM request body (413 beyond): a group PUT of 10,000 members is ~0.7 MB.
SCIM_MAX_BODY_BYTES = env_int("SCIM_MAX_BODY_BYTES", 2 * 1024 * 1024)
# Networks the server may fetch from at an org admin's request (IdP metadata, OIDC
# discovery): by default only public addresses (siphera.outbound); list an internal IdP's
# network here, e.g. "10.20.0.0/16".
OUTBOUND_ALLOWED_NETWORKS = env_list("OUTBOUND_ALLOWED_NETWORKS", "")
# Failed logins per window (orgs.services.auth.login_attempt; docs/rate-limits.md): per
# client IP, per (username, client IP), and per username from anywhere, past which only
# addresses that have not failed for that username get a verdict (a backoff, not a lockout).
LOGIN_RATE_PER_IP = env_int("LOGIN_RATE_PER_IP", 30)
LOGIN_RATE_PER_USERNAME_IP = env_int("LOGIN_RATE_PER_USERNAME_IP", 10)
LOGIN_RATE_PER_USERNAME = env_int("LOGIN_RATE_PER_USERNAME", 10)
LOGIN_RATE_WINDOW_SECONDS = env_int("LOGIN_RATE_WINDOW_SECONDS", 300)
# How many proxies in front of us append to X-Forwarded-For (0: use the socket peer).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

# Org admins verify a host name they add by publishing a DNS TXT record
# (orgs.services.domains): these resolvers are asked ("ip" or "ip:port", comma-separated;
# empty: the system's /etc/resolv.conf), each lookup given this many seconds.
DOMAIN_VERIFY_NAMESERVERS = env_list("DOMAIN_VERIFY_NAMESERVERS", "")
DOMAIN_VERIFY_TIMEOUT_SECONDS = env_int("DOMAIN_VERIFY_TIMEOUT_SECONDS", 5)

# Database sessions, cached in each process until the org's sessions change (siphera.sessions).
SESSION_ENGINE = "siphera.sessions"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- MFA / secrets ---------------------------------------------------------------------
# Key ring for secrets the server must read back (TOTP seeds, IdP secrets, ...) and for the
# audit chain's MAC keys (siphera.keyring; docs/key-rotation.md): the keys of KEY_RING_FILE
# first, then SECRET_KEYS (comma-separated, newest first; `pending:<key>` is decrypt-only).
# The first key that is not pending encrypts; all decrypt. Defaults to SECRET_KEY (dev).
SECRET_KEYS = env_list("SECRET_KEYS") or [SECRET_KEY]
# The key-ring file `manage.py rotate_keys` and the scheduled rotation write (JSON, 0600).
# Every web, worker and beat process must read the same file (one volume). Empty: keys come
# only from SECRET_KEYS and are added, promoted and retired by editing it.
KEY_RING_FILE = env("KEY_RING_FILE", str(SECRET_KEY_FILE.parent / "key_ring.json"))
# How often a process checks the file for a change (before it next uses the ring).
KEY_RING_RELOAD_SECONDS = env_int("KEY_RING_RELOAD_SECONDS", 10)
# Each process notes in Redis which keys it holds, for this long after it last used the
# ring: a promotion refuses while a process noted there lacks the new key.
KEY_RING_SEEN_SECONDS = env_int("KEY_RING_SEEN_SECONDS", 600)
# A new key is added (pending) every KEY_ROTATION_DAYS (0: never automatically) and
# promoted KEY_ROTATION_PROMOTE_AFTER_SECONDS later, once every process knows it; then the
# re-encryption job moves every secret to it. Beat checks every KEY_ROTATION_CHECK_SECONDS.
KEY_ROTATION_DAYS = env_int("KEY_ROTATION_DAYS", 90)
KEY_ROTATION_PROMOTE_AFTER_SECONDS = env_int("KEY_ROTATION_PROMOTE_AFTER_SECONDS", 3600)
KEY_ROTATION_CHECK_SECONDS = env_int("KEY_ROTATION_CHECK_SECONDS", 3600)
# Rows re-encrypted per transaction (and per checkpoint) by the re-encryption job.
KEY_ROTATION_BATCH = env_int("KEY_ROTATION_BATCH", 500)
if not 0 <= KEY_ROTATION_DAYS <= 3650:
    raise ImproperlyConfigured("KEY_ROTATION_DAYS must be between 0 (off) and 3650.")
if not 0 <= KEY_RING_RELOAD_SECONDS <= 300:
    raise ImproperlyConfigured("KEY_RING_RELOAD_SECONDS must be between 0 and 300.")
if not 60 <= KEY_RING_SEEN_SECONDS <= 86400:
    raise ImproperlyConfigured("KEY_RING_SEEN_SECONDS must be between 60 and 86400.")
if KEY_ROTATION_PROMOTE_AFTER_SECONDS < 2 * KEY_RING_RELOAD_SECONDS:
    raise ImproperlyConfigured(
        "KEY_ROTATION_PROMOTE_AFTER_SECONDS must be at least twice KEY_RING_RELOAD_SECONDS."
    )
if not 1 <= KEY_ROTATION_BATCH <= 10000:
    raise ImproperlyConfigured("KEY_ROTATION_BATCH must be between 1 and 10000.")
if not 60 <= KEY_ROTATION_CHECK_SECONDS <= 7 * 86400:
    raise ImproperlyConfigured("KEY_ROTATION_CHECK_SECONDS must be between 60 and 604800.")
CELERY_BEAT_SCHEDULE["key-rotation"] = {
    "task": "orgs.tasks.key_rotation_tick",
    "schedule": KEY_ROTATION_CHECK_SECONDS,
}
# With DEBUG off, a key anyone can read signs sessions and opens TOTP seeds: refuse to start
# (siphera.serve prints this message and exits non-zero; so does every manage.py command).
_weak_keys = [k for k in [SECRET_KEY, *SECRET_KEYS] if not k.strip() or k == DEV_SECRET_KEY]
if _weak_keys and not DEBUG:
    raise ImproperlyConfigured(
        "Refusing to start: SECRET_KEY (or a key of SECRET_KEYS) is empty or the development "
        "placeholder, and DEBUG is off. Set SECRET_KEY to a long random value, e.g. "
        "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))'); "
        f"`make run` generates one in {SECRET_KEY_FILE}, used when SECRET_KEY is unset. "
        "(DEBUG=true allows the placeholder, for development only.)"
    )
# The audit chain's HMAC key and its anchors' signing key are derived from SECRET_KEYS too
# (siphera.mac_keys). Signed anchors of each org's chain head are appended to
# <AUDIT_ANCHOR_DIR>/<schema>.jsonl, a directory kept apart from the database and backed
# up (docs/audit.md); beat writes them every AUDIT_ANCHOR_EVERY_SECONDS.
AUDIT_ANCHOR_DIR = Path(env("AUDIT_ANCHOR_DIR") or SECRET_KEY_FILE.parent / "audit-anchors")
AUDIT_ANCHOR_EVERY_SECONDS = env_int("AUDIT_ANCHOR_EVERY_SECONDS", 900)
if not 10 <= AUDIT_ANCHOR_EVERY_SECONDS <= 86400:
    raise ImproperlyConfigured("AUDIT_ANCHOR_EVERY_SECONDS must be between 10 and 86400.")
CELERY_BEAT_SCHEDULE["anchor-audit-chains"] = {
    "task": "orgs.tasks.dispatch_anchor_audit_chains",
    "schedule": AUDIT_ANCHOR_EVERY_SECONDS,
}
# Shown in authenticator apps next to the account name.
MFA_TOTP_ISSUER = env("MFA_TOTP_ISSUER", "Siphera")
# Time steps of clock drift tolerated either side of now (30 s each).
MFA_TOTP_DRIFT_STEPS = env_int("MFA_TOTP_DRIFT_STEPS", 1)
# Lifetime of the enrolment token a login gets when org policy needs MFA not yet set up.
MFA_ENROLLMENT_TOKEN_TTL_SECONDS = env_int("MFA_ENROLLMENT_TOKEN_TTL_SECONDS", 600)
# Code tries per user per LOGIN_RATE_WINDOW_SECONDS on the MFA endpoints (login has its own).
MFA_VERIFY_RATE_PER_USER = env_int("MFA_VERIFY_RATE_PER_USER", 10)

# --- WebSocket ----------------------------------------------------------------------------
WS_AUTH_TIMEOUT_SECONDS = float(env("WS_AUTH_TIMEOUT_SECONDS", "5"))
# Threads (each with its own PostgreSQL connection, outside the pool) that run WebSocket
# consumers' DB calls in one web process (siphera.tenancy.tenant_db).
WS_DB_THREADS = env_int("WS_DB_THREADS", 16)
# Of those threads, the most the fast path (siphera.fast_http) may keep busy at once, so a
# flood of REST sends never queues the sockets' frames behind it; a request past it waits
# its turn (at most DATABASE_POOL_TIMEOUT_SECONDS, then 503).
FAST_HTTP_DB_CALLS = env_int("FAST_HTTP_DB_CALLS", max(1, WS_DB_THREADS // 2))
if WS_DB_THREADS < 1 or not 1 <= FAST_HTTP_DB_CALLS <= WS_DB_THREADS:
    raise ImproperlyConfigured(
        "WS_DB_THREADS must be at least 1, and FAST_HTTP_DB_CALLS between 1 and WS_DB_THREADS."
    )
WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 256 * 1024)
# Presence (orgs.services.presence): a web process renews its heartbeat in Redis every
# min(5 s, a third of this); its sockets stop counting as connected this long after its
# last one (a crashed process's users turn offline). Also paces the push of ended
# dnd/away statuses (within 5 s).
PRESENCE_TTL_SECONDS = env_int("PRESENCE_TTL_SECONDS", 60)
if not 3 <= PRESENCE_TTL_SECONDS <= 3600:
    raise ImproperlyConfigured("PRESENCE_TTL_SECONDS must be between 3 and 3600.")
# The portal dashboard's database counts (users seen, messages per day, accounts, devices)
# are kept this long in each web process (messaging.services.stats); 0 counts on every
# view. Open sockets are always live.
DASHBOARD_CACHE_SECONDS = env_int("DASHBOARD_CACHE_SECONDS", 30)
if not 0 <= DASHBOARD_CACHE_SECONDS <= 3600:
    raise ImproperlyConfigured("DASHBOARD_CACHE_SECONDS must be between 0 and 3600.")

# --- Key directory ------------------------------------------------------------------------
# One-time and PQ prekeys held per device and kind (PITFALLS 16: a looping client must not
# grow the table without bound). Uploads beyond it are refused whole.
KEYS_MAX_PER_DEVICE = env_int("KEYS_MAX_PER_DEVICE", 500)
# Live devices per user: a key claim answers one bundle per device and a message carries
# one envelope per device, so neither may grow without bound (409 past it).
DEVICES_MAX_PER_USER = env_int("DEVICES_MAX_PER_USER", 100)
# Rate limits per device and window: uploads (PUT /api/v1/keys) and bundle claims
# (GET /api/v1/keys/{user_id}). Claims are generous: a new device joining large groups
# claims one bundle per member.
KEYS_RATE_WINDOW_SECONDS = env_int("KEYS_RATE_WINDOW_SECONDS", 60)
KEYS_UPLOAD_RATE = env_int("KEYS_UPLOAD_RATE", 30)
KEYS_CLAIM_RATE = env_int("KEYS_CLAIM_RATE", 1000)
# One-time (and PQ) prekeys a target device hands out per window, whoever claims: past it
# claims get the signed prekey alone (the last resort), so nobody drains a device's keys.
KEYS_TARGET_CLAIM_RATE = env_int("KEYS_TARGET_CLAIM_RATE", 100)
# A claim leaving a device with fewer one-time prekeys than this pushes `keys.low` to it,
# at most once per interval per device (the interval restarts when the device uploads).
KEYS_LOW_THRESHOLD = env_int("KEYS_LOW_THRESHOLD", 10)
KEYS_LOW_NOTIFY_INTERVAL_SECONDS = env_int("KEYS_LOW_NOTIFY_INTERVAL_SECONDS", 30)
# Messages waiting for one device (unacknowledged), unless the org's policy sets its own:
# past it a send refuses envelopes for that device (409 queue_full) and a body-only
# message skips its queue (messaging.services.delivery).
DEVICE_QUEUE_MAX = env_int("DEVICE_QUEUE_MAX", 10_000)

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["orgs.api.authentication.DeviceTokenAuthentication"],
    # Fail closed: a view that declares no permission (orgs.api.permissions) is refused.
    "DEFAULT_PERMISSION_CLASSES": ["orgs.api.permissions.Undeclared"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "siphera.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Siphera client API",
    "DESCRIPTION": "Siphera v1 client protocol. WebSocket frames are documented in "
    "docs/protocol.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Static files -----------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Logging: JSON lines with request id and org, never secrets ---------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOGGING = siphera_logging.config(LOG_LEVEL)  # siphera/logging.py: also uvicorn's

# --- Attachments and retention (messaging) ----------------------------------------------
# Attachment blobs (opaque ciphertext) go to the `attachments` storage: the local
# filesystem under MEDIA_ROOT by default, an S3-compatible bucket (AWS S3, MinIO, ...)
# through django-storages when ATTACHMENTS_S3_BUCKET is set. Names start with the org's
# schema: `<schema>/attachments/<xx>/<uuid>`.
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
# Largest upload, unless the org's messaging policy sets its own (100 MiB).
ATTACHMENT_MAX_BYTES = env_int("ATTACHMENT_MAX_BYTES", 100 * 1024 * 1024)
# The most an org's policy may set its own limit to (1 GiB).
ATTACHMENT_MAX_BYTES_CEILING = env_int("ATTACHMENT_MAX_BYTES_CEILING", 1024 * 1024 * 1024)
# Request bodies are refused (413) from Content-Length, or as they arrive, past these
# limits before Django reads them (siphera.body_limit): a path prefix's own limit, else
# DATA_UPLOAD_MAX_MEMORY_SIZE. Views keep their own, smaller checks (an org's attachment
# limit); these protect the process from spooling a huge body to disk first.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2621440)
REQUEST_BODY_LIMITS = {
    "/api/v1/attachments": max(ATTACHMENT_MAX_BYTES, ATTACHMENT_MAX_BYTES_CEILING),
    "/scim/v2/": SCIM_MAX_BODY_BYTES,
}
# Uploads never referenced by a message are purged after this long (a day).
ATTACHMENT_UNBOUND_TTL_SECONDS = env_int("ATTACHMENT_UNBOUND_TTL_SECONDS", 24 * 3600)
# Quotas, unless the org's policy sets its own: bytes of an org's completed attachments,
# and bytes of one user's uploads not yet sent in a message.
ATTACHMENT_STORAGE_QUOTA_BYTES = env_int("ATTACHMENT_STORAGE_QUOTA_BYTES", 100 * 1024**3)
UNSENT_UPLOAD_QUOTA_BYTES = env_int("UNSENT_UPLOAD_QUOTA_BYTES", 1024**3)
ATTACHMENTS_S3_BUCKET = env("ATTACHMENTS_S3_BUCKET")
if ATTACHMENTS_S3_BUCKET:
    from boto3.s3.transfer import TransferConfig

    # An upload streams to S3 in 8 MiB parts as it is read; at most 2 parts buffered and
    # 2 in flight keep its memory bounded (s3transfer buffers 10 parts by default).
    _ATTACHMENTS_S3_TRANSFER = TransferConfig(
        multipart_chunksize=8 * 1024 * 1024, max_concurrency=2
    )
    _ATTACHMENTS_S3_TRANSFER.max_in_memory_upload_chunks = 2
    STORAGES["attachments"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": ATTACHMENTS_S3_BUCKET,
            # Empty: AWS itself; MinIO or another S3-compatible service: its URL.
            "endpoint_url": env("ATTACHMENTS_S3_ENDPOINT_URL") or None,
            "region_name": env("ATTACHMENTS_S3_REGION") or None,
            # Empty: boto3's own chain (AWS_* variables, instance role, ...).
            "access_key": env("ATTACHMENTS_S3_ACCESS_KEY_ID") or None,
            "secret_key": env("ATTACHMENTS_S3_SECRET_ACCESS_KEY") or None,
            "location": env("ATTACHMENTS_S3_PREFIX"),
            # MinIO wants path-style addressing unless it has wildcard DNS.
            "addressing_style": env("ATTACHMENTS_S3_ADDRESSING_STYLE") or None,
            "default_acl": None,  # private: only the API hands the bytes out
            "querystring_auth": True,
            "file_overwrite": True,  # names are fresh UUIDs; skip an existence check
            "transfer_config": _ATTACHMENTS_S3_TRANSFER,
            # A download is fetched into a temporary file before it is streamed: on disk
            # beyond 2 MiB (the default, 0, would keep it all in memory).
            "max_memory_size": 2 * 1024 * 1024,
        },
    }
else:
    STORAGES["attachments"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": MEDIA_ROOT,
            "base_url": None,  # never served by URL: only the API hands the bytes out
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
# Retention of messages (and their queue rows and attachments) when neither the org's
# policy nor the conversation sets one; and how often beat runs the purge.
RETENTION_DEFAULT_DAYS = env_int("RETENTION_DEFAULT_DAYS", 30)
# Messages deleted per transaction by the purge (progress is logged per batch).
RETENTION_PURGE_BATCH = env_int("RETENTION_PURGE_BATCH", 500)
# Longest range of one compliance export (orgs/services/compliance.py), in days.
COMPLIANCE_EXPORT_MAX_DAYS = env_int("COMPLIANCE_EXPORT_MAX_DAYS", 3660)

# --- 1:1 calls (calls/services/signaling.py; docs/protocol.md, "Calls") ------------------
# An unanswered call ends as missed after this long (`call.ended` reason `timeout`).
CALL_RING_TIMEOUT_SECONDS = env_int("CALL_RING_TIMEOUT_SECONDS", 45)
# A party whose socket dropped keeps the call this long; reconnecting within it keeps the
# call, otherwise it ends (`call.ended` reason `failed`).
CALL_RECONNECT_GRACE_SECONDS = env_int("CALL_RECONNECT_GRACE_SECONDS", 20)
# Largest SDP (offer or answer) relayed, in bytes of UTF-8.
CALL_SDP_MAX_BYTES = env_int("CALL_SDP_MAX_BYTES", 64 * 1024)
# How often beat ends calls whose timers were lost (a worker gone with its timers).
CALL_SWEEP_EVERY_SECONDS = env_int("CALL_SWEEP_EVERY_SECONDS", 60)
for _name in ("CALL_RING_TIMEOUT_SECONDS", "CALL_RECONNECT_GRACE_SECONDS", "CALL_SDP_MAX_BYTES"):
    if not 1 <= globals()[_name] <= 24 * 3600 * 1024:
        raise ImproperlyConfigured(f"{_name} must be a positive number.")
CELERY_BEAT_SCHEDULE["sweep-calls"] = {
    "task": "calls.tasks.dispatch_sweep_calls",
    "schedule": CALL_SWEEP_EVERY_SECONDS,
}
# Call records are kept as long as messages (the org's retention), on the same beat.
CELERY_BEAT_SCHEDULE["purge-call-records"] = {
    "task": "calls.tasks.dispatch_purge_call_records",
    "schedule": CELERY_BEAT_SCHEDULE["retention-purge"]["schedule"],
}

# --- Compliance recording and transcription (calls/services/recording.py; docs/admin-guide.md)
# A party of a call the org's policy records must connect its leg to the recorder within
# this long (the caller from its invite, the callee from its accept), else the call ends
# with `call.ended` reason `recording_refused` (`recorder_unavailable` if the recorder
# itself never came up).
CALL_RECORDING_CONNECT_SECONDS = env_int("CALL_RECORDING_CONNECT_SECONDS", 20)
# The recorder stops a recording (and stores what it has) after this long.
CALL_RECORDING_MAX_SECONDS = env_int("CALL_RECORDING_MAX_SECONDS", 4 * 3600)
# A recorded leg whose media the recorder loses mid-call must connect again (the device
# offers a new leg) within this long, else the call ends with reason `recording_lost`.
CALL_RECORDING_LOST_GRACE_SECONDS = env_int("CALL_RECORDING_LOST_GRACE_SECONDS", 15)
# The recorder marks itself alive in the database every quarter of this; a recorded call
# whose recorder has not for this long (its process died, its host went away) ends with
# reason `recording_lost`: a call the policy records does not go on unrecorded.
CALL_RECORDER_SILENT_SECONDS = env_int("CALL_RECORDER_SILENT_SECONDS", 20)
# The transcription engine: `pocketsphinx` (default; its wheel ships an English model), or
# `faster-whisper` (install the package; needs TRANSCRIPTION_WHISPER_MODEL, a local model
# directory: nothing is ever downloaded), or `none` (no transcripts).
TRANSCRIPTION_ENGINE = env("TRANSCRIPTION_ENGINE", "pocketsphinx")
TRANSCRIPTION_WHISPER_MODEL = env("TRANSCRIPTION_WHISPER_MODEL", "")
if TRANSCRIPTION_ENGINE not in ("pocketsphinx", "faster-whisper", "none"):
    raise ImproperlyConfigured("TRANSCRIPTION_ENGINE is pocketsphinx, faster-whisper or none.")
if TRANSCRIPTION_ENGINE == "faster-whisper" and not TRANSCRIPTION_WHISPER_MODEL:
    raise ImproperlyConfigured(
        "TRANSCRIPTION_ENGINE=faster-whisper needs TRANSCRIPTION_WHISPER_MODEL."
    )
for _name in (
    "CALL_RECORDING_CONNECT_SECONDS",
    "CALL_RECORDING_MAX_SECONDS",
    "CALL_RECORDING_LOST_GRACE_SECONDS",
    "CALL_RECORDER_SILENT_SECONDS",
):
    if not 1 <= globals()[_name] <= 7 * 24 * 3600:
        raise ImproperlyConfigured(f"{_name} must be a positive number of seconds.")

# --- Group calls on LiveKit (calls/services/livekit.py; docs/operations.md, "LiveKit") ----
# The URL clients connect to (ws:// or wss://). Empty, or no key/secret: group-call
# endpoints answer 503 `livekit_not_configured`.
LIVEKIT_URL = env("LIVEKIT_URL")
# The room service as this server reaches it (http(s)://); default: LIVEKIT_URL with
# ws -> http, wss -> https.
LIVEKIT_API_URL = env("LIVEKIT_API_URL") or (
    "http" + LIVEKIT_URL[2:] if LIVEKIT_URL.startswith("ws") else LIVEKIT_URL
)
# The key pair LiveKit knows (its `keys:`); signs room tokens and checks its webhooks.
LIVEKIT_API_KEY = env("LIVEKIT_API_KEY")
LIVEKIT_API_SECRET = env("LIVEKIT_API_SECRET")
# Lifetime of a room token: the time a client has to connect with it (LiveKit refreshes
# the token of a connected participant itself).
LIVEKIT_TOKEN_TTL_SECONDS = env_int("LIVEKIT_TOKEN_TTL_SECONDS", 600)
if not 10 <= LIVEKIT_TOKEN_TTL_SECONDS <= 86400:
    raise ImproperlyConfigured("LIVEKIT_TOKEN_TTL_SECONDS must be between 10 and 86400.")

# --- Enterprise controls: rate limits (orgs; docs/rate-limits.md) ----------------------
# Named rate limits, "name=count/seconds,..." over the defaults in siphera/ratelimit.py
# (every name and default is in docs/rate-limits.md). Empty: the defaults.
RATE_LIMITS = env("RATE_LIMITS", "")
# `http.ip` on every request an org host answers (needs the org: after TenantMiddleware).
MIDDLEWARE.insert(
    MIDDLEWARE.index("siphera.middleware.TenantMiddleware") + 1,
    "siphera.ratelimit.RateLimitMiddleware",
)
# `api.user` on every authenticated API call.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["siphera.ratelimit.ApiUserRateLimit"]

# --- Calls: TURN relay credentials (calls/services/turn.py; docs/operations.md, "TURN") --
# URLs clients get with each credential (`turn:turn.example.com:3478?transport=udp`,
# `turns:turn.example.com:5349?transport=tcp`, `stun:...`). Empty: TURN is not configured
# and GET /api/v1/calls/turn answers 503 `turn_not_configured`.
TURN_URLS = env_list("TURN_URLS")
# coturn's `static-auth-secret`s (`use-auth-secret`), newest first: the newest signs. Never
# logged.
TURN_SECRETS = env_list("TURN_SECRETS")
# How long a credential may open a new allocation (coturn does not end one already made).
TURN_TTL_SECONDS = env_int("TURN_TTL_SECONDS", 3600)
# A half-configured TURN would hand out credentials no server accepts: refuse to start.
if bool(TURN_URLS) != bool(TURN_SECRETS):
    raise ImproperlyConfigured("TURN_URLS and TURN_SECRETS must be set together, or neither.")
for _url in TURN_URLS:
    if _url.partition(":")[0] not in {"turn", "turns", "stun", "stuns"}:
        raise ImproperlyConfigured(f"TURN_URLS: {_url!r} is not a turn:, turns: or stun: URL.")
if not 60 <= TURN_TTL_SECONDS <= 86400:
    raise ImproperlyConfigured("TURN_TTL_SECONDS must be between 60 and 86400.")

# --- OpenID Connect sign-in (orgs/sso/oidc.py; docs/sso-oidc.md) ----------------------------
# Seconds to wait for the IdP's discovery, JWKS, token and userinfo endpoints.
OIDC_HTTP_TIMEOUT_SECONDS = env_int("OIDC_HTTP_TIMEOUT_SECONDS", 5)
# An ID token signed with an unknown key id fetches the IdP's JWKS again (key rollover),
# at most once per this many seconds per org, so forged tokens cannot make us hammer it.
OIDC_JWKS_MIN_REFETCH_SECONDS = env_int("OIDC_JWKS_MIN_REFETCH_SECONDS", 60)
# Cached IdP keys older than this are fetched again before an ID token is checked, so a key
# the IdP withdrew stops verifying (within the limit above).
OIDC_JWKS_MAX_AGE_SECONDS = env_int("OIDC_JWKS_MAX_AGE_SECONDS", 86400)
# How far the IdP's clock may be off ours when checking an ID token's exp and iat.
OIDC_CLOCK_SKEW_SECONDS = env_int("OIDC_CLOCK_SKEW_SECONDS", 120)
# Accept http:// issuers and endpoints (development and tests only; never in production).
OIDC_ALLOW_HTTP = env_bool("OIDC_ALLOW_HTTP", False)

# --- SAML 2.0 sign-in (orgs/sso/saml.py; docs/sso.md) ---------------------------------------
# Seconds to wait for an IdP's metadata URL; how often beat re-reads every org's metadata
# URL (certificate rollover, changed endpoints). SAML_CLOCK_SKEW_SECONDS is above.
SAML_HTTP_TIMEOUT_SECONDS = env_int("SAML_HTTP_TIMEOUT_SECONDS", 5)
SAML_METADATA_REFRESH_SECONDS = env_int("SAML_METADATA_REFRESH_SECONDS", 24 * 3600)
# Accept http:// metadata URLs and IdP endpoints (development and tests only; never in
# production: whoever sits on the path could swap the IdP's certificate).
SAML_ALLOW_HTTP = env_bool("SAML_ALLOW_HTTP", False)
CELERY_BEAT_SCHEDULE["refresh-saml-metadata"] = {
    "task": "orgs.sso.tasks.dispatch_refresh_saml_metadata",
    "schedule": SAML_METADATA_REFRESH_SECONDS,
}

# --- Metrics (siphera/metrics; docs/operations.md, "Metrics") --------------------------------
# GET /metrics (Prometheus text format) on a host no org answers, to a scraper sending
# `Authorization: Bearer <METRICS_TOKEN>` or coming from METRICS_ALLOWED_NETWORKS (e.g.
# "10.0.0.0/8"; the client address as TRUSTED_PROXY_COUNT finds it). Neither set: not served.
METRICS_TOKEN = env("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", "")
if METRICS_ALLOWED_NETWORKS:
    import ipaddress

    for _net in METRICS_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(_net, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"METRICS_ALLOWED_NETWORKS: {_net!r} is no network."
            ) from None
# A Celery worker serves its own /metrics (task durations and failures) on this port, same
# token and networks; 0: off. METRICS_DIR (read by siphera.metrics.procdir, not here) holds
# the processes' shared metric files.
CELERY_METRICS_PORT = env_int("CELERY_METRICS_PORT", 0)
CELERY_METRICS_HOST = env("CELERY_METRICS_HOST", "127.0.0.1")
