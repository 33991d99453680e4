"""Registering a device with its public keys: identity's device plus the key directory's
prekeys, all or nothing."""

from __future__ import annotations

from django.db import transaction

from messaging.services import keys, retention
from orgs.accounts.models import Device, User
from orgs.services import audit
from orgs.services.auth import consume_grant
from orgs.services.devices import do_create_device


def check_register_device(
    *, grant: str, name: str, bundle: keys.DeviceKeys, actor: audit.Actor
) -> tuple[Device, str]:
    """Exchange a login grant for a new device with its public keys.

    All or nothing: the grant is consumed only if the keys verify and the device is stored.
    Returns the device and its bearer token (shown once; only its hash is kept).
    """
    keys.verify_bundle(bundle)  # 422 bad_signature before anything is touched
    with transaction.atomic():
        user = consume_grant(grant)
        return do_register_device(user, name=name, bundle=bundle, actor=actor)


def do_register_device(
    user: User, *, name: str, bundle: keys.DeviceKeys, actor: audit.Actor
) -> tuple[Device, str]:
    """A new device of `user` with the keys of `bundle` (signatures already verified)."""
    with transaction.atomic():
        device, token = do_create_device(
            user,
            name=name,
            identity_key=bundle.identity_key,
            signing_key=bundle.signing_key,
            actor=actor,
        )
        keys.do_store_keys(device, bundle)
    return device, token


def on_device_revoked(device: Device) -> None:
    """orgs.hooks.device_revoked: a revoked device's keys and queue go with it (except
    queued envelopes a legal hold keeps: messaging.services.retention)."""
    keys.do_delete_keys(device)
    retention.do_drop_revoked_queue(device)
