"""Portal sessions: Django's database sessions, each process keeping what it read.

Every signed-in portal page read its session row from PostgreSQL (a fifth of the page's
time). Here a process keeps the rows it read (siphera.generations) until any session of
the org is saved or deleted (a sign-in, a sign-out, a single logout from the IdP: the
org's `sessions` generation is bumped), and checks the expiry date on every use, so a
session ends at the same moment as before: at once in the process that ended it, within
GENERATION_CHECK_SECONDS in the others. Who the session belongs to is still checked on
every request (Django's session hash against the user's row: a new password or a
deactivation ends it at once).

    SESSION_ENGINE = "siphera.sessions"
"""

from __future__ import annotations

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import connection
from django.utils import timezone

from siphera import generations

__all__ = ["SessionStore", "forget_cached_sessions"]

_sessions = generations.GenerationCache()


def _generation(schema: str) -> str:
    return f"sessions.{schema}"


def forget_cached_sessions(**_signal_kwargs) -> None:
    """A session of the current org was saved or deleted: every process drops the org's
    cached sessions (after the transaction commits). Connected to the Session model's
    signals (orgs.apps)."""
    generations.bump(_generation(connection.schema_name))


class SessionStore(DatabaseSessionStore):
    def _get_session_from_db(self):
        if not self.session_key:
            return super()._get_session_from_db()
        schema = connection.schema_name
        row = _sessions.get_or_fetch(
            (schema, self.session_key), _generation(schema), super()._get_session_from_db
        )
        if row is not None and row.expire_date <= timezone.now():
            self._session_key = None  # as the database store does for an expired row
            return None
        return row
