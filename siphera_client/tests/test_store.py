"""The local state file: secrets encrypted under the passphrase, written safely."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from nacl.signing import VerifyKey

from siphera_client.crypto import Crypto
from siphera_client.store import Store, StoreError, WrongPassphrase


def test_the_state_file_holds_no_secret_in_the_clear_and_only_its_owner_reads_it(tmp_path):
    # Given a store with an Olm account and a device token
    store = Store.create(tmp_path / "state.json", "pass phrase")
    store.data.update(user_id="u", device_id=1, token=store.seal("sph_dev_secret-token"))
    crypto = Crypto(store)
    crypto.new_one_time_prekeys(3)
    crypto.flush()
    store.save()

    # Then the file is 0600, the token is not readable and the account is an encrypted pickle
    path = tmp_path / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "secret-token" not in text
    document = json.loads(text)
    assert document["kdf"]["name"] == "scrypt"
    reopened = Store.open(path, "pass phrase")
    assert reopened.unseal(reopened.data["token"]) == "sph_dev_secret-token"
    assert Crypto(reopened).identity_key == crypto.identity_key


def test_a_wrong_passphrase_or_an_existing_file_is_refused(tmp_path):
    Store.create(tmp_path / "state.json", "right").save()
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path / "state.json", "wrong")
    with pytest.raises(StoreError):
        Store.create(tmp_path / "state.json", "right")
    with pytest.raises(StoreError):
        Store.open(tmp_path / "missing.json", "right")


def test_the_signed_prekey_is_signed_over_its_raw_bytes_by_the_published_signing_key(tmp_path):
    store = Store.create(tmp_path / "state.json", "p")
    crypto = Crypto(store)
    registration = crypto.registration("laptop", one_time=2)
    spk = registration["signed_prekey"]
    VerifyKey(base64.b64decode(registration["signing_key"])).verify(
        base64.b64decode(spk["key"]), base64.b64decode(spk["signature"])
    )
    assert len(base64.b64decode(registration["identity_key"])) == 32
    assert [k["id"] for k in registration["one_time_prekeys"]] == [0, 1]
