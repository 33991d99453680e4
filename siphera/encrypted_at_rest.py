"""The registry of everything the server keeps encrypted with the key ring (siphera.crypto),
so that one job can re-encrypt it all under the active key and tell whether an old key is
still used (orgs.services.key_rotation; docs/key-rotation.md).

Apps register what they own in their `AppConfig.ready()` (the core imports nothing above
it):

- `register_encrypted_field("accounts.TotpFactor", "secret_encrypted")`: a text column
  holding `crypto.encrypt(...)` tokens ("" and NULL are skipped), in every org schema
  (or, with `public=True`, in the public schema only). The job walks the table in primary
  key order, re-encrypts a batch in one transaction with its checkpoint, and never
  rewrites a value already under the active key.
- `register_encrypted_blobs(BlobStore(...))`: encrypted bytes kept outside the database
  (a file or object store). Prefer envelope encryption for large blobs (recordings): a
  random data key per blob encrypts the bytes, and the data key, wrapped with
  `crypto.encrypt`, sits in a registered field; then rotation re-wraps a short token and
  never rewrites the blob. A BlobStore is for stores whose bytes are themselves a
  `crypto.encrypt` token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BlobStore",
    "EncryptedField",
    "blob_stores",
    "fields",
    "register_encrypted_blobs",
    "register_encrypted_field",
]


@dataclass(frozen=True)
class EncryptedField:
    """A model field whose values are crypto.encrypt tokens."""

    model: str  # "app_label.ModelName"
    field: str
    public: bool = False  # the table lives in the public schema, not in each org's

    @property
    def name(self) -> str:
        return f"{self.model}.{self.field}"

    def model_class(self):
        from django.apps import apps

        return apps.get_model(self.model)


@dataclass(frozen=True)
class BlobStore:
    """Encrypted blobs outside the database, in the current org (the job calls these in the
    org's schema context).

    - `names_after(after, limit)`: up to `limit` blob names greater than `after` ("" for
      the first), in ascending order (the job's checkpoint is the last name done);
    - `count()`: how many blobs the org has (for progress);
    - `read(name)`: the stored token (str), or None when the blob is gone meanwhile;
    - `write(name, token)`: replace the blob's token atomically (write a new object,
      then swap), so a reader never sees half a blob.
    """

    name: str
    names_after: Callable[[str, int], list[str]]
    count: Callable[[], int]
    read: Callable[[str], str | None]
    write: Callable[[str, str], None]
    public: bool = False


_fields: dict[str, EncryptedField] = {}
_blobs: dict[str, BlobStore] = {}


def register_encrypted_field(model: str, field: str, *, public: bool = False) -> EncryptedField:
    """Register `model.field` (tokens of crypto.encrypt) for re-encryption and usage checks.
    Registering the same field again is a no-op (ready() may run twice in tests)."""
    entry = EncryptedField(model, field, public)
    _fields.setdefault(entry.name, entry)
    return entry


def register_encrypted_blobs(store: BlobStore) -> BlobStore:
    """Register a blob store by its name (replacing one of the same name)."""
    _blobs[store.name] = store
    return store


def unregister_encrypted_blobs(name: str) -> None:
    """Forget a blob store (tests that register a store of their own)."""
    _blobs.pop(name, None)


def fields() -> list[EncryptedField]:
    """Every registered field, in registration order."""
    return list(_fields.values())


def blob_stores() -> list[BlobStore]:
    """Every registered blob store, in registration order."""
    return list(_blobs.values())
