"""A device's local state: one JSON file, secrets encrypted under a local passphrase.

What is in the file:
- `kdf`: scrypt parameters and salt. scrypt(passphrase) yields 64 bytes: the first 32 are
  the pickle key vodozemac encrypts every pickle with (account, Olm sessions, Megolm
  sessions), the last 32 a Fernet key for the other secrets (the device token).
- `check`: a Fernet token of a constant, so a wrong passphrase is refused at open.
- `data`: the device's identity (server, host, user, device id), the encrypted token, the
  pickles, the pinned public keys of the devices met so far, conversation caches.

The file is written atomically (temporary file + rename) with mode 0600 after every change
that a crash must not lose (a consumed one-time key, a new session) and before the message
that caused it is acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

FORMAT = "siphera-client-state"
VERSION = 1
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_CHECK = b"siphera-client"


class StoreError(Exception):
    pass


class WrongPassphrase(StoreError):
    pass


def _derive(passphrase: str, salt: bytes, params: dict) -> tuple[bytes, Fernet]:
    raw = hashlib.scrypt(
        passphrase.encode(),
        salt=salt,
        n=params["n"],
        r=params["r"],
        p=params["p"],
        maxmem=128 * 1024 * 1024,
        dklen=64,
    )
    return raw[:32], Fernet(base64.urlsafe_b64encode(raw[32:]))


class Store:
    """The state file of one device. `data` is the plain JSON dict the client reads and
    writes; `pickle_key` encrypts vodozemac pickles; `seal`/`unseal` other secrets."""

    def __init__(self, path: Path, header: dict, data: dict, pickle_key: bytes, fernet: Fernet):
        self.path, self.header, self.data = path, header, data
        self.pickle_key, self._fernet = pickle_key, fernet

    @classmethod
    def create(cls, path: str | os.PathLike, passphrase: str) -> Store:
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists: not overwriting another device's state.")
        salt = secrets.token_bytes(16)
        pickle_key, fernet = _derive(passphrase, salt, SCRYPT)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "kdf": {"name": "scrypt", "salt": base64.b64encode(salt).decode(), **SCRYPT},
            "check": fernet.encrypt(_CHECK).decode(),
        }
        return cls(path, header, {}, pickle_key, fernet)

    @classmethod
    def open(cls, path: str | os.PathLike, passphrase: str) -> Store:
        path = Path(path)
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"No state file at {path}: register a device first.") from None
        except ValueError:
            raise StoreError(f"{path} is not a Siphera client state file.") from None
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            raise StoreError(f"{path} is not a version {VERSION} Siphera client state file.")
        kdf = document["kdf"]
        pickle_key, fernet = _derive(passphrase, base64.b64decode(kdf["salt"]), kdf)
        try:
            fernet.decrypt(document["check"].encode())
        except InvalidToken:
            raise WrongPassphrase(f"Wrong passphrase for {path}.") from None
        header = {k: v for k, v in document.items() if k != "data"}
        return cls(path, header, document.get("data", {}), pickle_key, fernet)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def unseal(self, sealed: str) -> str:
        return self._fernet.decrypt(sealed.encode()).decode()

    def save(self) -> None:
        """Write the whole state atomically; only this user can read the file."""
        text = json.dumps({**self.header, "data": self.data}, separators=(",", ":"))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
