"""Profiles: display name, title, time zone and avatar, changed by the user or an admin
(run inside the org's schema).

Avatars are decoded and re-encoded on the server (Pillow): whatever was uploaded, what is
stored and served is a fresh AVATAR_SIZE x AVATAR_SIZE PNG, so no metadata (EXIF, GPS) and
no crafted bytes reach anyone. Uploads larger than AVATAR_MAX_BYTES (413), not an image
(400 `invalid_image`) or declaring more than AVATAR_MAX_PIXELS (400 `image_too_large`, a
decompression bomb is refused from its header, before it is decoded) leave nothing behind.
The blob lives in the `attachments` storage under `<schema>/avatars/`; it is served only to
those who may see the user (orgs.services.directory.can_see).
"""

from __future__ import annotations

import io
import logging
import unicodedata
import uuid
import warnings
import zoneinfo
from functools import cache
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connection, transaction
from PIL import Image, ImageOps, UnidentifiedImageError

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.services.users import check_can_change
from siphera.api_errors import ApiError, not_found

log = logging.getLogger(__name__)

FIELDS = {"display_name": 200, "title": 100, "time_zone": 64}
AVATAR_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


@cache
def time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# Joiners build emoji and some scripts' ligatures; every other format character (bidi
# overrides, invisible separators) could make a name read as someone else's.
_ALLOWED_FORMAT = frozenset("\u200c\u200d")


def _hidden(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and ch not in _ALLOWED_FORMAT)


def _clean_text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_profile", f"{name} is a string.")
    value = " ".join(value.split())  # no newlines or runs of blanks in a name
    if any(_hidden(ch) for ch in value):
        raise ApiError(400, "invalid_profile", f"{name} has control or invisible characters.")
    if len(value) > limit:
        raise ApiError(400, "invalid_profile", f"{name} is at most {limit} characters.")
    return value


def clean_profile(changes: dict[str, Any]) -> dict[str, str]:
    """Validated profile changes: 400 `invalid_profile` naming the first bad field."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ApiError(400, "invalid_profile", f"Unknown profile fields: {', '.join(unknown)}.")
    clean = {name: _clean_text(name, changes[name], FIELDS[name]) for name in changes}
    if clean.get("time_zone") and clean["time_zone"] not in time_zones():
        raise ApiError(
            400,
            "invalid_profile",
            "time_zone is an IANA time zone name such as Europe/Paris (or empty).",
        )
    return clean


def check_update_profile(user: User, changes: dict[str, Any], *, actor: audit.Actor) -> User:
    """Change `user`'s profile fields (any of FIELDS). An admin changing someone else's
    needs every code that user holds (403, orgs.services.roles). Audited
    `member.profile_changed` with the fields changed, before and after."""
    clean = clean_profile(changes)
    if actor.user is not None and actor.user.pk != user.pk:
        check_can_change(actor.user, user)
    return do_update_profile(user, clean, actor=actor)


def do_update_profile(user: User, changes: dict[str, str], *, actor: audit.Actor) -> User:
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        changed = {k: v for k, v in changes.items() if getattr(locked, k) != v}
        if not changed:
            return locked
        before = {k: getattr(locked, k) for k in changed}
        for name, value in changed.items():
            setattr(locked, name, value)
        locked.save(update_fields=list(changed))
        audit.record(
            AuditEvent.MEMBER_PROFILE_CHANGED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username, "before": before, "after": changed},
        )
    return locked


# --- avatars ---------------------------------------------------------------------------------


def _storage():
    return storages["attachments"]


def render_avatar(data: bytes) -> bytes:
    """The uploaded image as a square PNG of AVATAR_SIZE pixels (centre-cropped, turned
    upright per its EXIF orientation), or a 4xx ApiError."""
    limit = settings.AVATAR_MAX_BYTES
    if not data:
        raise ApiError(400, "invalid_image", "The body is empty: upload a PNG, JPEG, GIF or WebP.")
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"Avatars are limited to {limit} bytes.")
    too_many_pixels = ApiError(
        400,
        "image_too_large",
        f"The image has more than {settings.AVATAR_MAX_PIXELS} pixels.",
    )
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that, and raises beyond:
            # both are a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=AVATAR_FORMATS) as image:
                width, height = image.size
                if width * height > settings.AVATAR_MAX_PIXELS:
                    raise too_many_pixels
                image.draft("RGB", (settings.AVATAR_SIZE * 2, settings.AVATAR_SIZE * 2))
                image.seek(0)
                image = ImageOps.exif_transpose(image)
                image = image.convert("RGBA")
                size = settings.AVATAR_SIZE
                image = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
                out = io.BytesIO()
                image.save(out, format="PNG", optimize=True)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_many_pixels from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ApiError(
            400, "invalid_image", "This is not a readable PNG, JPEG, GIF or WebP image."
        ) from None
    return out.getvalue()


def check_set_avatar(user: User, data: bytes, *, actor: audit.Actor) -> User:
    """Replace `user`'s avatar with the uploaded image (see the module's rules); an admin
    changing someone else's needs every code that user holds (403). The old blob is
    deleted after commit. Audited `member.profile_changed` (field `avatar`)."""
    if actor.user is not None and actor.user.pk != user.pk:
        check_can_change(actor.user, user)
    png = render_avatar(data)
    name = f"{connection.schema_name}/avatars/{uuid.uuid4()}.png"
    try:
        name = _storage().save(name, ContentFile(png))
    except Exception:
        log.exception("avatar storage failed")
        raise ApiError(
            503, "storage_unavailable", "The avatar could not be stored; try again later."
        ) from None
    try:
        return _replace_avatar(user, name, actor=actor)
    except BaseException:
        _delete_blob(name)
        raise


def check_remove_avatar(user: User, *, actor: audit.Actor) -> User:
    """Remove `user`'s avatar (idempotent); same permission rule as `check_set_avatar`."""
    if actor.user is not None and actor.user.pk != user.pk:
        check_can_change(actor.user, user)
    return _replace_avatar(user, "", actor=actor)


def _replace_avatar(user: User, name: str, *, actor: audit.Actor) -> User:
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        old = locked.avatar
        if old == name:
            return locked
        locked.avatar = name
        locked.save(update_fields=["avatar"])
        audit.record(
            AuditEvent.MEMBER_PROFILE_CHANGED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={
                "username": locked.username,
                "before": {"avatar": bool(old)},
                "after": {"avatar": bool(name)},
            },
        )
        if old:
            transaction.on_commit(lambda: _delete_blob(old))
    return locked


def _delete_blob(name: str) -> None:
    try:
        _storage().delete(name)
    except Exception:  # a left-over blob is harmless; the request must not fail on it
        log.warning("avatar blob not deleted", extra={"storage_name": name}, exc_info=True)


def open_avatar(user: User):
    """`user`'s avatar PNG as a file object, or 404 when they have none."""
    if not user.avatar:
        raise not_found("This user has no avatar.")
    try:
        return _storage().open(user.avatar, "rb")
    except FileNotFoundError:
        log.warning("avatar blob missing", extra={"user": str(user.pk)})
        raise not_found("This user has no avatar.") from None
