"""Identity's part of the client WebSocket (siphera.consumer): who a token belongs to,
the `devices` frame, and the events that end or change a socket's rights (a revoked
device, a deactivated user, a changed role). Registered in OrgsConfig.ready()."""

from __future__ import annotations

import logging

from orgs.api.fields import b64
from orgs.roles import Perm, codes_for
from orgs.services import auth, devices
from siphera import sockets
from siphera.api_errors import ApiError
from siphera.sockets import SocketClient, SocketIdentity
from siphera.tenancy import group_name
from siphera.ws import CLOSE_REVOKED, FrameError

log = logging.getLogger("siphera.ws")


def authenticate(token: str, client: SocketClient | None = None) -> SocketIdentity | None:
    """The identity of a live device token (None for any other), noting the device was
    seen (when, and from where). Runs on a DB thread in the socket's org."""
    from django.db import connection

    device = auth.authenticate_token(token)
    if device is None:
        return None
    client = client or SocketClient()
    devices.do_touch_device(device, ip=client.ip, user_agent=client.user_agent)
    schema = connection.schema_name
    return SocketIdentity(
        device=device,
        user_id=device.user_id,
        device_id=device.device_id,
        codes=codes_for(device.user),
        device_group=devices.device_group(device, schema),
        groups=(group_name(schema, "u", device.user_id),),
    )


def revalidate(identity: SocketIdentity) -> SocketIdentity | None:
    """The socket's identity again, with its user and codes read afresh, if its device
    still works (not revoked, its user active); None otherwise. On a DB thread in the
    socket's org, when the org's rights generation moved (siphera.consumer)."""
    from orgs.accounts.models import Device

    device = (
        Device.objects.select_related("user")
        .filter(pk=identity.device.pk, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if device is None:
        return None
    identity.device.user = device.user  # services read the role from the socket's user
    identity.codes = codes_for(device.user)
    return identity


def fresh_codes(identity: SocketIdentity) -> frozenset[Perm]:
    from orgs.accounts.models import User

    user = User.objects.filter(pk=identity.user_id).first()
    if user is not None:
        identity.device.user = user  # services read the role from the socket's user
    return codes_for(user)


def _device_list(viewer, user_id):
    from orgs.services.directory import access_directory_user

    user = access_directory_user(viewer, user_id)
    return {
        "type": "devices",
        "user_id": str(user.pk),
        "devices": [
            {
                "device_id": d.device_id,
                "name": d.name,
                "identity_key": b64(d.identity_key),
                "signing_key": b64(d.signing_key),
            }
            for d in devices.user_devices(user)
        ],
    }


class IdentitySocket(sockets.Extension):
    name = "orgs"

    @sockets.frame("devices", perm=Perm.MESSAGING_USE)
    async def devices(self, frame):
        """A user's current devices (default: the caller's own) — to address envelopes."""
        from siphera.tenancy import tenant_db

        user_id = frame.get("user_id", str(self.device.user_id))
        try:
            reply = await tenant_db(self.org, _device_list, self.device.user, user_id)
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None
        if "ref" in frame:
            reply["ref"] = frame["ref"]
        await self.send_frame(reply)

    # --- channel-layer events (from services, after commit) -----------------------------
    @sockets.event("device.revoked")
    async def device_revoked(self, event):
        await self.send_frame({"type": "device.revoked"})
        await self.socket.close(code=CLOSE_REVOKED)

    @sockets.event("user.deactivated")
    async def user_deactivated(self, event):
        """The user was deactivated (orgs.services.users): every socket of theirs ends."""
        await self.send_frame({"type": "user.deactivated"})
        await self.socket.close(code=CLOSE_REVOKED)

    @sockets.event("user.permissions_changed")
    async def user_permissions_changed(self, event):
        """The user's role, or their custom role's codes, changed: reload the codes."""
        await self.socket.reload_codes()


def register() -> None:
    sockets.register(IdentitySocket)
    sockets.authenticate_with(
        authenticate, fresh_codes, revalidator=revalidate, rights_generation=auth.auth_generation
    )
