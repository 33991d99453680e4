"""Recording blobs: envelope-encrypted at rest in the `attachments` storage
(filesystem or S3, messaging.services.attachments.storage).

Each recording gets a random Fernet data key. The WAV is cut into chunks of
`CHUNK_BYTES`; each chunk is one Fernet token of the data key over
`recording id (16 bytes) | chunk index (4) | last flag (1) | bytes`, written as a 4-byte
big-endian length then the token. The header binds every chunk to its recording and its
place, so chunks cannot be reordered, dropped, cut short or swapped between recordings
without decryption failing. The data key itself is a key-ring token
(`Recording.data_key_encrypted`, siphera.crypto, registered with
siphera.encrypted_at_rest): a key rotation re-wraps it and never rewrites the blob.

Nothing here writes plaintext audio to the store; readers decrypt a chunk at a time.
"""

from __future__ import annotations

import logging
import struct
import tempfile
import uuid
from collections.abc import Iterable, Iterator

from cryptography.fernet import Fernet, InvalidToken
from django.core.files import File
from django.db import connection

from messaging.services.attachments import storage
from siphera import crypto

log = logging.getLogger("siphera.recordings")

CHUNK_BYTES = 256 * 1024
_HEADER = struct.Struct(">16sIB")
_LENGTH = struct.Struct(">I")
# A token of one chunk: base64 of (header + chunk + Fernet's 57 bytes), with room to spare.
_MAX_TOKEN = (CHUNK_BYTES + _HEADER.size + 100) * 4 // 3 + 100


class CorruptRecording(Exception):
    """The stored blob does not decrypt as this recording's (tampered with, truncated, or
    its data key is gone)."""


def storage_name(recording_id: uuid.UUID) -> str:
    return f"{connection.schema_name}/recordings/{recording_id.hex[:2]}/{recording_id}.wav.enc"


def new_data_key() -> tuple[bytes, str]:
    """A fresh data key and its key-ring token (what the row keeps)."""
    key = Fernet.generate_key()
    return key, crypto.encrypt(key)


def _rechunk(pieces: Iterable[bytes]) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)


def write_encrypted(recording_id: uuid.UUID, data_key: bytes, pieces: Iterable[bytes]) -> tuple:
    """Encrypt the plaintext `pieces` chunk by chunk into a temporary file, then save it to
    the store. Returns (stored name, stored size). Memory stays at one chunk."""
    fernet = Fernet(data_key)
    with tempfile.TemporaryFile() as out:
        chunks = _rechunk(pieces)
        current = next(chunks, b"")
        index = 0
        while True:
            following = next(chunks, None)
            last = following is None
            token = fernet.encrypt(_HEADER.pack(recording_id.bytes, index, last) + current)
            out.write(_LENGTH.pack(len(token)) + token)
            if last:
                break
            current, index = following, index + 1
        size = out.tell()
        out.seek(0)
        name = storage().save(storage_name(recording_id), File(out))
    return name, size


def read_decrypted(recording_id: uuid.UUID, data_key_token: str, name: str) -> Iterator[bytes]:
    """The plaintext WAV of a stored recording, a chunk at a time (raises
    CorruptRecording on any mismatch)."""
    with storage().open(name, "rb") as blob:
        yield from decrypt_stream(recording_id, data_key_token, blob)


def decrypt_stream(recording_id: uuid.UUID, data_key_token: str, blob) -> Iterator[bytes]:
    """Decrypt an open blob chunk by chunk."""
    try:
        fernet = Fernet(crypto.decrypt(data_key_token))
    except (crypto.DecryptionError, ValueError):
        raise CorruptRecording("the data key does not decrypt") from None
    index = 0
    while True:
        head = blob.read(_LENGTH.size)
        if len(head) != _LENGTH.size:
            raise CorruptRecording("the blob ends before its last chunk")
        (length,) = _LENGTH.unpack(head)
        if length > _MAX_TOKEN:
            raise CorruptRecording("a chunk is too long")
        token = blob.read(length)
        try:
            plain = fernet.decrypt(token)
        except InvalidToken:
            raise CorruptRecording(f"chunk {index} does not decrypt") from None
        rec, got_index, last = _HEADER.unpack(plain[: _HEADER.size])
        if rec != recording_id.bytes or got_index != index:
            raise CorruptRecording(f"chunk {index} is out of place")
        yield plain[_HEADER.size :]
        if last:
            return
        index += 1
