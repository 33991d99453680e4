from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0005_queue_message_without_db_constraint"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="last_event_seq",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunSQL(
            "UPDATE messaging_conversation c SET last_event_seq = e.seq"
            " FROM (SELECT conversation_id, max(seq) AS seq FROM messaging_message"
            "       WHERE kind = 'event' GROUP BY conversation_id) e"
            " WHERE e.conversation_id = c.id",
            migrations.RunSQL.noop,
        ),
    ]
