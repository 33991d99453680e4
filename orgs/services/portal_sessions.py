"""A user's portal sessions: noted at sign-in, listed for admins, ended one by one or all
at once (run inside the org's schema).

The session itself is Django's (siphera.sessions); a `PortalSession` row names it by key
and says when and from where it was signed in and last used. A row is live while its
Django session exists and has not expired, the org's session lifetime has not passed
since sign-in, and the session's auth hash still matches the user's (a new password or a
raised `session_epoch` ends every session at once without touching these rows).

Ending a session deletes its Django session row, so the next request of that browser is
signed out at once in this process and within GENERATION_CHECK_SECONDS in the others
(siphera.sessions' cache follows the org's `sessions` generation). Both are audited.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from orgs.accounts.models import PortalSession, User
from orgs.audit_events import AuditEvent
from orgs.services import audit, policy
from siphera.api_errors import not_found


def do_record_session(user: User, session_key: str, *, actor: audit.Actor) -> PortalSession:
    """Note a new portal sign-in of `user` (called right after the session got its final
    key), dropping the user's rows that are no longer live."""
    now = timezone.now()
    with transaction.atomic():
        rows = _rows(user)
        found = _sessions(rows)
        dead = [row.pk for row in rows if not _is_live(row, user, found)]
        PortalSession.objects.filter(pk__in=dead).delete()
        return PortalSession.objects.create(
            user=user,
            session_key=session_key,
            last_seen_at=now,
            ip=actor.ip,
            user_agent=actor.user_agent[:300],
        )


def do_rekey_session(old_key: str, new_key: str) -> None:
    """The session kept its user but got a new key (Django cycles it when the user's
    password changes under it)."""
    PortalSession.objects.filter(session_key=old_key).update(session_key=new_key)


def do_touch_session(session_key: str, *, ip: str | None) -> None:
    """Note that the session was used just now, from `ip`. An UPDATE of this row only:
    the Django session (and the cached copies of it) stay untouched."""
    PortalSession.objects.filter(session_key=session_key).update(last_seen_at=timezone.now(), ip=ip)


def _rows(user: User) -> list[PortalSession]:
    return list(PortalSession.objects.filter(user=user).order_by("-last_seen_at"))


def _sessions(rows: list[PortalSession]) -> dict[str, Session]:
    keys = [row.session_key for row in rows]
    return {s.session_key: s for s in Session.objects.filter(session_key__in=keys)}


def _is_live(row: PortalSession, user: User, found: dict[str, Session]) -> bool:
    session = found.get(row.session_key)
    now = timezone.now()
    if session is None or session.expire_date <= now or not user.is_active:
        return False
    if row.created_at + timedelta(seconds=policy.session_lifetime_seconds()) <= now:
        return False
    stored = session.get_decoded().get(HASH_SESSION_KEY, "")
    return constant_time_compare(stored, user.get_session_auth_hash())


def live_sessions(user: User) -> list[PortalSession]:
    """`user`'s portal sessions that still work, most recently used first."""
    user = User.objects.get(pk=user.pk)  # the current auth hash, not a stale copy's
    rows = _rows(user)
    found = _sessions(rows)
    return [row for row in rows if _is_live(row, user, found)]


def access_session(user: User, session_id) -> PortalSession:
    """A live portal session of `user`, or a 404 (also for another user's or a
    malformed id)."""
    try:
        wanted = uuid.UUID(str(session_id))
    except ValueError:
        raise not_found("No such session.") from None
    for row in live_sessions(user):
        if row.pk == wanted:
            return row
    raise not_found("No such session.")


def check_end_session(row: PortalSession, *, actor: audit.Actor) -> None:
    """An admin ends a portal session of a user: 403 `forbidden` when that user holds a
    code the admin lacks; then do_end_session."""
    from orgs.services.users import check_can_change

    check_can_change(actor.user, row.user)
    do_end_session(row, actor=actor)


def do_end_session(row: PortalSession, *, actor: audit.Actor) -> None:
    """End one portal session (audited `member.session_ended`)."""
    with transaction.atomic():
        Session.objects.filter(session_key=row.session_key).delete()
        PortalSession.objects.filter(pk=row.pk).delete()
        audit.record(
            AuditEvent.MEMBER_SESSION_ENDED,
            actor=actor,
            target_type="user",
            target_id=row.user_id,
            data={"session": str(row.pk), "ip": row.ip, "user_agent": row.user_agent},
        )


def check_sign_out_everywhere(user: User, *, actor: audit.Actor) -> dict[str, int]:
    """An admin (or the user) signs `user` out everywhere: 403 `forbidden` when `user`
    holds a code the acting admin lacks; then do_sign_out_everywhere."""
    from orgs.services.users import check_can_change

    check_can_change(actor.user, user)
    return do_sign_out_everywhere(user, actor=actor)


def do_sign_out_everywhere(user: User, *, actor: audit.Actor) -> dict[str, int]:
    """End every portal session of `user` and revoke every device (their sockets get
    `device.revoked` and are closed after commit), in one transaction; audited
    `member.signed_out_everywhere` with the counts (and `device.revoked` per device).
    Returns {"sessions": n, "devices": m}."""
    from orgs.services.devices import do_revoke_user_devices

    with transaction.atomic():
        sessions = len(live_sessions(user))
        locked = User.objects.select_for_update().get(pk=user.pk)
        locked.session_epoch += 1  # ends every session, noted or not
        locked.save(update_fields=["session_epoch"])
        keys = list(PortalSession.objects.filter(user=locked).values_list("session_key", flat=True))
        Session.objects.filter(session_key__in=keys).delete()
        PortalSession.objects.filter(user=locked).delete()
        devices = do_revoke_user_devices(locked, actor=actor, reason="signed_out_everywhere")
        audit.record(
            AuditEvent.MEMBER_SIGNED_OUT_EVERYWHERE,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username, "sessions": sessions, "devices": devices},
        )
    return {"sessions": sessions, "devices": devices}
