"""Key the audit chain (orgs.services.audit): each entry names the key of the ring that
made its hash (`key_id`).

Existing entries keep their plain SHA-256 hashes and get the legacy key id "sha256"
(adding the column writes no row, so the append-only trigger of 0002 stays as it is and
is not bypassed). Then, in every org schema whose log is not empty, one keyed entry
`audit.chain_keyed` is appended after the last legacy one: from it on, an unkeyed entry is
refused by verification, so nobody without the key ring can append to the old part either.
"""

import json

from django.db import migrations, models
from django.utils import timezone

LEGACY_KEY_ID = "sha256"


def seal_legacy_chain(apps, schema_editor):
    # The pure hashing functions of the service; the row is written with plain SQL so
    # this migration does not depend on later versions of the model.
    from orgs.services.audit import CHAIN_PURPOSE, canonical_payload
    from siphera import mac_keys

    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", [0x5E1A])
        cursor.execute(
            "SELECT count(*), (SELECT hash FROM accounts_auditentry ORDER BY id DESC LIMIT 1),"
            " (SELECT key_id FROM accounts_auditentry ORDER BY id DESC LIMIT 1)"
            " FROM accounts_auditentry"
        )
        count, head, head_key = cursor.fetchone()
        if not count or head_key != LEGACY_KEY_ID:
            return
        key = mac_keys.newest(CHAIN_PURPOSE)
        ts = timezone.now()
        fields = {
            "ts": ts.isoformat(),
            "event": "audit.chain_keyed",
            "actor_id": None,
            "actor_label": "migration:accounts.0008",
            "ip": None,
            "user_agent": "",
            "target_type": "audit_log",
            "target_id": "chain",
            "data": {"legacy_entries": count, "legacy_head": head, "key_id": key.id},
        }
        digest = key.sign(head.encode() + canonical_payload(fields))
        cursor.execute(
            "INSERT INTO accounts_auditentry (ts, event, actor_id, actor_label, ip, user_agent,"
            " target_type, target_id, data, key_id, prev_hash, hash)"
            " VALUES (%s, %s, NULL, %s, NULL, '', %s, %s, %s::jsonb, %s, %s, %s)",
            [
                ts,
                fields["event"],
                fields["actor_label"],
                fields["target_type"],
                fields["target_id"],
                json.dumps(fields["data"]),
                key.id,
                head,
                digest,
            ],
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_profiles_and_password_resets"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="key_id",
            field=models.CharField(default=LEGACY_KEY_ID, max_length=16),
            preserve_default=False,
        ),
        migrations.RunPython(seal_legacy_chain, migrations.RunPython.noop),
    ]
