"""Key directory: a device's public keys — stored, topped up, counted and claimed.

Guarantees:
- Every signed key (signed prekey, PQ prekeys) carries an Ed25519 signature by the device's
  signing key over the raw public key bytes; a bad signature is refused (422) before
  anything is stored.
- An upload is all or nothing: limits, conflicts and signatures are checked before the
  first write, under a lock on the device row, so concurrent uploads of one device cannot
  together exceed `KEYS_MAX_PER_DEVICE`.
- A one-time or PQ prekey is handed out at most once, even under concurrent claims
  (PITFALLS 14): each is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` and removed by
  the same statement's `DELETE ... RETURNING`, oldest upload first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from messaging.models import OneTimePrekey, PqPrekey, SignedPrekey
from orgs.accounts.models import Device, User
from orgs.services import devices as device_services
from orgs.services.directory import access_directory_user
from siphera import ratelimit
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit

MAX_ONE_TIME_PER_REQUEST = 100

# Machine-readable error codes of the key directory.
KEY_ID_CONFLICT = "key_id_conflict"  # 400: an id already held with other bytes
TOO_MANY_KEYS = "too_many_keys"  # 400: the upload would exceed KEYS_MAX_PER_DEVICE
TOO_MANY_IN_REQUEST = "too_many_keys_in_request"  # 400: more than 100 of a kind at once
DUPLICATE_KEY_ID = "duplicate_key_id"  # 400: the same id twice in one request
BAD_SIGNATURE = "bad_signature"  # 422


@dataclass(frozen=True)
class SignedKey:
    key_id: int
    key: bytes
    signature: bytes


@dataclass(frozen=True)
class OneTimeKey:
    key_id: int
    key: bytes


@dataclass(frozen=True)
class DeviceKeys:
    identity_key: bytes
    signing_key: bytes
    signed_prekey: SignedKey | None
    one_time_prekeys: list[OneTimeKey] = field(default_factory=list)
    pq_prekeys: list[SignedKey] = field(default_factory=list)


@dataclass(frozen=True)
class KeyUpload:
    """What a device adds to (or replaces in) its own entry of the directory."""

    signed_prekey: SignedKey | None = None
    one_time_prekeys: list[OneTimeKey] = field(default_factory=list)
    pq_prekeys: list[SignedKey] = field(default_factory=list)


@dataclass(frozen=True)
class KeyCounts:
    one_time: int
    pq: int


@dataclass(frozen=True)
class DeviceBundle:
    """What a sender needs to open a session with one device. `one_time_prekey` and
    `pq_prekey` are None when the device has none left (the signed prekey is the last
    resort)."""

    device_id: int
    identity_key: bytes
    signing_key: bytes
    signed_prekey: SignedKey | None
    one_time_prekey: OneTimeKey | None
    pq_prekey: SignedKey | None


# --- signatures ---------------------------------------------------------------------------


def verify_signed(signing_key: bytes, signed: SignedKey, what: str) -> None:
    try:
        VerifyKey(bytes(signing_key)).verify(signed.key, signed.signature)
    except (BadSignatureError, ValueError, TypeError):
        raise ApiError(
            422,
            BAD_SIGNATURE,
            f"The signature of {what} {signed.key_id} does not verify with the "
            "device's signing key.",
        ) from None


def verify_bundle(bundle: DeviceKeys) -> None:
    """Raise 422 `bad_signature` unless every signed key verifies."""
    if len(bundle.signing_key) != 32:
        raise ApiError(400, "invalid_request", "signing_key must be a 32-byte Ed25519 key.")
    if bundle.signed_prekey is not None:
        verify_signed(bundle.signing_key, bundle.signed_prekey, "signed_prekey")
    for pq in bundle.pq_prekeys:
        verify_signed(bundle.signing_key, pq, "pq_prekey")


# --- registration and revocation ------------------------------------------------------------


def do_store_keys(device, bundle: DeviceKeys) -> None:
    """Store a new device's keys (signatures already verified)."""
    if bundle.signed_prekey is not None:
        SignedPrekey.objects.update_or_create(
            device=device,
            defaults={
                "key_id": bundle.signed_prekey.key_id,
                "key": bundle.signed_prekey.key,
                "signature": bundle.signed_prekey.signature,
            },
        )
    OneTimePrekey.objects.bulk_create(
        [OneTimePrekey(device=device, key_id=k.key_id, key=k.key) for k in bundle.one_time_prekeys]
    )
    PqPrekey.objects.bulk_create(
        [
            PqPrekey(device=device, key_id=k.key_id, key=k.key, signature=k.signature)
            for k in bundle.pq_prekeys
        ]
    )


def do_delete_keys(device) -> None:
    """Delete every key of a (revoked) device."""
    SignedPrekey.objects.filter(device=device).delete()
    OneTimePrekey.objects.filter(device=device).delete()
    PqPrekey.objects.filter(device=device).delete()


# --- uploads --------------------------------------------------------------------------------


def _rate_ident(device: Device) -> str:
    return str(device.pk)


def check_upload_keys(device: Device, upload: KeyUpload) -> None:
    """Rate-limit, validate and store a device's key upload; all or nothing.

    Raises 429 `rate_limited` (per device, KEYS_UPLOAD_RATE per KEYS_RATE_WINDOW_SECONDS),
    400 `too_many_keys_in_request` / `duplicate_key_id`, 422 `bad_signature`, and — from
    do_upload_keys — 400 `key_id_conflict` / `too_many_keys`. Nothing is stored on error.
    """
    ratelimit.enforce(
        "keys-upload",
        _rate_ident(device),
        limit=settings.KEYS_UPLOAD_RATE,
        window=settings.KEYS_RATE_WINDOW_SECONDS,
    )
    for what, batch in (
        ("one_time_prekeys", upload.one_time_prekeys),
        ("pq_prekeys", upload.pq_prekeys),
    ):
        if len(batch) > MAX_ONE_TIME_PER_REQUEST:
            raise ApiError(
                400,
                TOO_MANY_IN_REQUEST,
                f"At most {MAX_ONE_TIME_PER_REQUEST} {what} per request.",
            )
        ids = [k.key_id for k in batch]
        if len(ids) != len(set(ids)):
            raise ApiError(400, DUPLICATE_KEY_ID, f"The same id appears twice in {what}.")
    if upload.signed_prekey is not None:
        verify_signed(device.signing_key, upload.signed_prekey, "signed_prekey")
    for pq in upload.pq_prekeys:
        verify_signed(device.signing_key, pq, "pq_prekey")
    do_upload_keys(device, upload)


def _fresh_keys(model, device: Device, batch: list, what: str, *, signed: bool) -> list:
    """The keys of `batch` not yet held; 400 `key_id_conflict` if an id is held with other
    bytes. An id held with the same bytes is skipped (an identical re-upload is a no-op)."""
    if not batch:
        return []
    fields = ("key_id", "key", "signature") if signed else ("key_id", "key")
    held = {
        row[0]: tuple(bytes(v) for v in row[1:])
        for row in model.objects.filter(
            device=device, key_id__in=[k.key_id for k in batch]
        ).values_list(*fields)
    }
    fresh, conflicts = [], []
    for k in batch:
        mine = (k.key, k.signature) if signed else (k.key,)
        if k.key_id not in held:
            fresh.append(k)
        elif held[k.key_id] != mine:
            conflicts.append(k.key_id)
    if conflicts:
        raise ApiError(
            400,
            KEY_ID_CONFLICT,
            f"{what} id {conflicts[0]} is already held with other bytes; "
            "key ids must not be reused.",
            extra={"kind": what, "key_ids": sorted(conflicts)},
        )
    return fresh


def _check_room(model, device: Device, adding: int, what: str) -> None:
    if not adding:
        return
    cap = settings.KEYS_MAX_PER_DEVICE
    held = model.objects.filter(device=device).count()
    if held + adding > cap:
        raise ApiError(
            400,
            TOO_MANY_KEYS,
            f"A device holds at most {cap} {what} keys: {held} held, {adding} new in this "
            "request. Upload fewer.",
            extra={"kind": what, "held": held, "max": cap},
        )


def do_upload_keys(device: Device, upload: KeyUpload) -> None:
    """Replace the signed prekey and add the new one-time and PQ prekeys (signatures already
    verified). Atomic; concurrent uploads of one device are serialised on its row, so the
    per-device cap holds. Re-sent keys with identical bytes are skipped."""
    with transaction.atomic():
        Device.objects.select_for_update().filter(pk=device.pk).first()
        one_time = _fresh_keys(
            OneTimePrekey, device, upload.one_time_prekeys, "one_time", signed=False
        )
        pq = _fresh_keys(PqPrekey, device, upload.pq_prekeys, "pq", signed=True)
        _check_room(OneTimePrekey, device, len(one_time), "one_time")
        _check_room(PqPrekey, device, len(pq), "pq")
        if upload.signed_prekey is not None:
            SignedPrekey.objects.update_or_create(
                device=device,
                defaults={
                    "key_id": upload.signed_prekey.key_id,
                    "key": upload.signed_prekey.key,
                    "signature": upload.signed_prekey.signature,
                },
            )
        OneTimePrekey.objects.bulk_create(
            [OneTimePrekey(device=device, key_id=k.key_id, key=k.key) for k in one_time]
        )
        PqPrekey.objects.bulk_create(
            [PqPrekey(device=device, key_id=k.key_id, key=k.key, signature=k.signature) for k in pq]
        )
    # The device has acted on (or pre-empted) `keys.low`: the next claim that leaves it
    # low may tell it again at once.
    ratelimit.reset("keys-low", _rate_ident(device))


def key_counts(device: Device) -> KeyCounts:
    """How many one-time and PQ prekeys the device still has on the server."""
    return KeyCounts(
        one_time=OneTimePrekey.objects.filter(device=device).count(),
        pq=PqPrekey.objects.filter(device=device).count(),
    )


# --- claims ---------------------------------------------------------------------------------


def _claim_sql(model, columns: str) -> str:
    # Lock the device's oldest key no other claim holds, and delete it in the same
    # statement: two concurrent claims can never both return it (PITFALLS 14). The tenant
    # schema is on the connection's search_path, so the bare table name is this org's;
    # only the device id is a parameter.
    table = connection.ops.quote_name(model._meta.db_table)
    return (
        f"DELETE FROM {table} WHERE id = ("
        f" SELECT id FROM {table} WHERE device_id = %s"
        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {columns}"
    )


def _claim_one_time(device: Device) -> OneTimeKey | None:
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(OneTimePrekey, "key_id, key"), [device.pk])
        row = cursor.fetchone()
    return OneTimeKey(key_id=row[0], key=bytes(row[1])) if row else None


def _claim_pq(device: Device) -> SignedKey | None:
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(PqPrekey, "key_id, key, signature"), [device.pk])
        row = cursor.fetchone()
    return SignedKey(key_id=row[0], key=bytes(row[1]), signature=bytes(row[2])) if row else None


def check_claim_bundles(
    user_id, *, requester: Device, device_id: int | None = None
) -> tuple[User, list[DeviceBundle]]:
    """Claim a bundle for each current device of the user `user_id` (or only its device
    `device_id`), for the device `requester`.

    Raises 429 `rate_limited` (per requesting device, KEYS_CLAIM_RATE per
    KEYS_RATE_WINDOW_SECONDS; the per-target budget never refuses, see do_claim_bundles)
    and 404 `not_found` for an unknown, other-org or malformed
    user id, or an unknown/revoked `device_id`. The requesting device never receives its
    own bundle; a deactivated user has no devices to claim.
    """
    ratelimit.enforce(
        "keys-claim",
        _rate_ident(requester),
        limit=settings.KEYS_CLAIM_RATE,
        window=settings.KEYS_RATE_WINDOW_SECONDS,
    )
    # The same visibility as looking the user up: a guest claims only people they share a
    # conversation with, and gets the same 404 as for an unknown id otherwise.
    user = access_directory_user(requester.user, user_id)
    targets = list(device_services.user_devices(user)) if user.is_active else []
    targets = [d for d in targets if d.pk != requester.pk]
    if device_id is not None:
        targets = [d for d in targets if d.device_id == device_id]
        if not targets:
            raise not_found("No such device.")
    return user, do_claim_bundles(targets)


def _within_target_budget(device: Device) -> bool:
    # One member's many devices (or scripts) must not drain everyone's one-time prekeys:
    # each target device hands out at most KEYS_TARGET_CLAIM_RATE of them per window,
    # whoever claims. Past it a claim still opens a session with the signed (last-resort)
    # prekey, as when the device has run out.
    return (
        ratelimit.hit(
            "keys-claimed",
            _rate_ident(device),
            limit=settings.KEYS_TARGET_CLAIM_RATE,
            window=settings.KEYS_RATE_WINDOW_SECONDS,
        )
        is None
    )


def do_claim_bundles(devices: list[Device]) -> list[DeviceBundle]:
    """One bundle per device, consuming at most one one-time and one PQ prekey of each,
    oldest upload first, in one transaction. No key is ever returned twice. A device
    whose KEYS_TARGET_CLAIM_RATE is spent for the window gives its signed prekey only
    (its keys are not touched). A device left with fewer than KEYS_LOW_THRESHOLD one-time
    prekeys by a claim is told (`keys.low`) after commit.
    """
    # Counted before the transaction: Redis is not asked while row locks are held.
    budget = {device.pk: _within_target_budget(device) for device in devices}
    bundles = []
    with transaction.atomic():
        signed = {s.device_id: s for s in SignedPrekey.objects.filter(device__in=devices)}
        for device in devices:
            take = budget[device.pk]
            one_time = _claim_one_time(device) if take else None
            pq = _claim_pq(device) if take else None
            spk = signed.get(device.pk)
            bundles.append(
                DeviceBundle(
                    device_id=device.device_id,
                    identity_key=bytes(device.identity_key),
                    signing_key=bytes(device.signing_key),
                    signed_prekey=(
                        SignedKey(spk.key_id, bytes(spk.key), bytes(spk.signature)) if spk else None
                    ),
                    one_time_prekey=one_time,
                    pq_prekey=pq,
                )
            )
            if not take:
                continue  # nothing taken: the device's count has not moved
            counts = key_counts(device)
            if counts.one_time < settings.KEYS_LOW_THRESHOLD:
                notify_keys_low(device, counts)
    return bundles


def notify_keys_low(device: Device, counts: KeyCounts) -> None:
    """Push `{"type": "keys.low", "one_time", "pq"}` to the device's socket after commit,
    at most once per KEYS_LOW_NOTIFY_INTERVAL_SECONDS (a burst of claims sends one frame;
    an upload re-arms it). A device offline at the time learns its count from
    GET /api/v1/keys/count when it reconnects."""
    throttled = ratelimit.hit(
        "keys-low",
        _rate_ident(device),
        limit=1,
        window=settings.KEYS_LOW_NOTIFY_INTERVAL_SECONDS,
    )
    if throttled is None:
        notify_on_commit(
            device_services.device_group(device),
            {"type": "keys.low", "one_time": counts.one_time, "pq": counts.pq},
        )
