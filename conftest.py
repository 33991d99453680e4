"""Test harness: a real PostgreSQL test database, a real Redis, and the real ASGI app under
uvicorn in a subprocess (plus a Celery worker when a test asks for one).

Per-run names (database, Redis prefixes, Celery queue) come from siphera/settings_test.py.
Data is committed (the server is another process), so tests create uniquely named rows
instead of relying on rollback; two orgs, `alpha` and `bravo`, exist for every suite to
assert isolation against.
"""

import logging
import os

# Async tests call the harness's own sync helpers (creating users, looking up hosts) from
# the event loop; that is test set-up, not server code. Subprocesses (server, worker) do
# not inherit this: tests/fixtures.child_env removes it.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytest_plugins = ["tests.fixtures", "tests.smtp", "tests.dns"]

logging.getLogger("httpx").setLevel(logging.WARNING)
