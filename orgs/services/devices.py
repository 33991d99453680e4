"""Registering and revoking devices."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from orgs import hooks
from orgs.accounts.models import Device, User
from orgs.audit_events import AuditEvent
from orgs.services import audit, tokens
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit
from siphera.tenancy import group_name


def do_create_device(
    user: User, *, name: str, identity_key: bytes, signing_key: bytes, actor: audit.Actor
) -> tuple[Device, str]:
    """Create a device of `user` with its identity and signing keys (audited
    `device.registered`). Its prekeys are the key directory's business: devices register
    through messaging.services.devices, which calls this in its transaction.

    Returns the device and its bearer token (shown once; only its hash is kept). A user
    holding DEVICES_MAX_PER_USER live devices already is refused (409 `too_many_devices`):
    every claim of their keys and every message to them covers all their devices."""
    with transaction.atomic():
        # Lock the user row so concurrent registrations get distinct device ids (ids are
        # never reused: revoked devices keep theirs) and cannot pass the cap together.
        User.objects.select_for_update().filter(pk=user.pk).first()
        cap = settings.DEVICES_MAX_PER_USER
        if user_devices(user).count() >= cap:
            raise ApiError(
                409,
                "too_many_devices",
                f"A user has at most {cap} devices: revoke one you no longer use first.",
            )
        highest = Device.objects.filter(user=user).aggregate(m=Max("device_id"))["m"] or 0
        token, token_hash = tokens.new_secret(tokens.DEVICE_TOKEN_PREFIX)
        device = Device.objects.create(
            user=user,
            device_id=highest + 1,
            name=name,
            identity_key=identity_key,
            signing_key=signing_key,
            token_hash=token_hash,
            last_seen_ip=actor.ip,
            user_agent=actor.user_agent[:300],
        )
        audit.record(
            AuditEvent.DEVICE_REGISTERED,
            actor=actor.with_user(user),
            target_type="device",
            target_id=f"{user.pk}:{device.device_id}",
            data={"name": name},
        )
    return device, token


def access_device(user: User, device_id) -> Device:
    """A live device of `user`, or 404."""
    try:
        return Device.objects.get(user=user, device_id=int(device_id), revoked_at__isnull=True)
    except (Device.DoesNotExist, ValueError, TypeError):
        raise not_found("No such device.") from None


def check_revoke_device(device: Device, *, actor: audit.Actor) -> None:
    """An admin revokes a device of a user: 403 `forbidden` when that user holds a code
    the admin lacks (a security desk cannot lock an owner out); then do_revoke_device."""
    from orgs.services.users import check_can_change

    check_can_change(actor.user, device.user)
    do_revoke_device(device, actor=actor)


def do_revoke_device(device: Device, *, actor: audit.Actor) -> None:
    """Revoke a device: its token stops working, the apps drop what they hold for it
    (orgs.hooks.device_revoked: its keys, its message queue, its calls), and its live
    socket is told (`device.revoked`) and closed with 4403 once this commits."""
    with transaction.atomic():
        device.revoked_at = timezone.now()
        device.token_hash = None
        device.save(update_fields=["revoked_at", "token_hash"])
        hooks.device_revoked(device)
        audit.record(
            AuditEvent.DEVICE_REVOKED,
            actor=actor,
            target_type="device",
            target_id=f"{device.user_id}:{device.device_id}",
            data={"name": device.name},
        )
        notify_on_commit(device_group(device), {"type": "device.revoked"})


def do_revoke_user_devices(
    user: User, *, actor: audit.Actor, notify: bool = True, reason: str = ""
) -> int:
    """Revoke every live device of `user` in one transaction (one `device.revoked` entry
    each); returns how many. With `notify`, each device's socket is told and closed after
    commit; a caller that closes all of the user's sockets itself (deactivation) passes
    False."""
    count = 0
    with transaction.atomic():
        for device in Device.objects.select_for_update().filter(user=user, revoked_at__isnull=True):
            device.revoked_at = timezone.now()
            device.token_hash = None
            device.save(update_fields=["revoked_at", "token_hash"])
            hooks.device_revoked(device)
            audit.record(
                AuditEvent.DEVICE_REVOKED,
                actor=actor,
                target_type="device",
                target_id=f"{device.user_id}:{device.device_id}",
                data={"name": device.name, **({"reason": reason} if reason else {})},
            )
            if notify:
                notify_on_commit(device_group(device), {"type": "device.revoked"})
            count += 1
    return count


def device_group(device: Device, schema: str | None = None) -> str:
    from django.db import connection

    return group_name(schema or connection.schema_name, "d", device.user_id, device.device_id)


def user_devices(user: User):
    return Device.objects.filter(user=user, revoked_at__isnull=True).order_by("device_id")


def do_touch_device(device: Device, *, ip: str | None = None, user_agent: str = "") -> None:
    """Record that the device was seen (on socket auth), and from where. An UPDATE, not
    a save: it must not move the org's auth generation (orgs.services.auth)."""
    device.last_seen_at = timezone.now()
    device.last_seen_ip = ip
    device.user_agent = user_agent[:300]
    Device.objects.filter(pk=device.pk).update(
        last_seen_at=device.last_seen_at,
        last_seen_ip=device.last_seen_ip,
        user_agent=device.user_agent,
    )
