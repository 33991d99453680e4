"""Settings for the test suite: siphera.settings with per-run names.

Each pytest run (and the server/worker subprocesses it starts, which inherit these
variables) gets its own test database, Redis key prefixes and Celery queue, so two runs on
one machine never clobber each other. Only environment defaults are set here.
"""

import os
import tempfile

_RUN = f"t{os.getpid()}"
# DEBUG stays off in tests (as in production), so the placeholder key would be refused
# (siphera/settings.py): each run gets a key of its own, which its subprocesses inherit.
os.environ.setdefault("SECRET_KEY", f"test-only-secret-key-{_RUN}-{os.urandom(16).hex()}")
os.environ.setdefault("TEST_DATABASE_NAME", f"test_siphera_{_RUN}")
os.environ.setdefault("CHANNEL_LAYER_PREFIX", f"siphera-{_RUN}")
os.environ.setdefault("CACHE_KEY_PREFIX", f"siphera-{_RUN}")
os.environ.setdefault("CELERY_QUEUE", f"siphera-{_RUN}")
# Audit anchors are files named by org schema, and every run has orgs of the same names.
os.environ.setdefault(
    "AUDIT_ANCHOR_DIR", os.path.join(tempfile.gettempdir(), f"siphera-{_RUN}-audit-anchors")
)
# The key-ring file (siphera.keyring): one per run, never a developer's var/key_ring.json;
# re-read on every use, so a test's change reaches the servers and workers at once.
os.environ.setdefault(
    "KEY_RING_FILE", os.path.join(tempfile.gettempdir(), f"siphera-{_RUN}-key-ring.json")
)
os.environ.setdefault("KEY_RING_RELOAD_SECONDS", "0")
# Blobs (attachments, avatars, recordings): one directory per run, never a developer's
# var/media, set here (before settings are read) so the test process and the servers and
# workers it starts, which inherit it, read and write the same files. Always this run's
# own (tests/fixtures.py's media_root removes it at the end).
os.environ["MEDIA_ROOT"] = os.path.join(tempfile.gettempdir(), f"siphera-{_RUN}-media")
# Every consumer DB call checks with PostgreSQL that it runs in its socket's org schema
# (siphera.tenancy.verify_schema): a cross-org mix-up fails loudly instead of passing.
os.environ.setdefault("TENANT_DB_VERIFY_SCHEMA", "true")
# Every test logs in from 127.0.0.1: the per-IP login limit would trip across tests. The
# per-username limit (what the rate-limit test exercises) keeps its default.
os.environ.setdefault("LOGIN_RATE_PER_IP", "1000000")
# Likewise forgot-password requests per IP (the per-account limit keeps its default).
os.environ.setdefault("PASSWORD_RESET_RATE_PER_IP", "1000000")
# Likewise the named limits (siphera/ratelimit.py): per IP for the same reason, per user
# because load-style tests (many messages or claims by one user) must not meet them. A
# test that exercises a limit starts its own server with a low one (RATE_LIMITS_TEST
# below + its override: later entries win).
_NAMED_LIMITS = (
    "http.ip",
    "api.user",
    "portal.user",
    "invitation.ip",
    "ws.connect.ip",
    "sso.ip",
)
RATE_LIMITS_TEST = ",".join(f"{name}=1000000/60" for name in (*_NAMED_LIMITS, "ws.frame.user"))
os.environ.setdefault("RATE_LIMITS", RATE_LIMITS_TEST)

# Every test server hands out TURN credentials (the permission matrix calls every
# endpoint); the tests that need a TURN server to accept them start coturn themselves, and
# the one about an unconfigured TURN starts a server with both emptied.
os.environ.setdefault("TURN_URLS", "turn:127.0.0.1:3478?transport=udp")
os.environ.setdefault("TURN_SECRETS", f"turn-secret-{_RUN}")
# Tests change rows from the test process (a third process) and then ask a server at once;
# the servers re-read the cache generations on every lookup instead of once a second
# (siphera.generations). The tests of the one-second window start servers of their own
# with the default (orgs/tests/test_auth_cache.py, admin_portal/tests/test_portal_session_cache.py).
os.environ.setdefault("GENERATION_CHECK_SECONDS", "0")
# Likewise the dashboard's counts: tests send messages and read the figures at once (the
# cache itself is tested with a server of its own: messaging/tests/test_activity.py).
os.environ.setdefault("DASHBOARD_CACHE_SECONDS", "0")
# The OpenID provider the OIDC tests run (orgs/tests/oidc_provider.py) speaks plain http
# on 127.0.0.1.
os.environ.setdefault("OIDC_ALLOW_HTTP", "true")
# Likewise the SAML identity provider of the SAML tests (orgs/tests/saml_idp.py).
os.environ.setdefault("SAML_ALLOW_HTTP", "true")

# The tests' IdPs (pysaml2, authlib) listen on loopback, which the server otherwise refuses
# to fetch from (siphera.outbound).
os.environ.setdefault("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")

# The test servers serve /metrics to this token (siphera/tests/test_metrics.py).
os.environ.setdefault("METRICS_TOKEN", f"metrics-token-{_RUN}")

from siphera.settings import *  # noqa: E402, F403

# The test process itself runs no server: its database calls come from the test's thread
# and from threads that asyncio tests and helpers start and end, which would each take a
# pooled connection and never hand it back. The servers and workers it starts (which read
# siphera.settings) keep the pool.
DATABASES["default"]["OPTIONS"].pop("pool", None)  # noqa: F405
