from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0009_portal_sessions_device_seen_pending_domains"),
    ]

    operations = [
        migrations.AddField(
            model_name="orgpolicy",
            name="group_max_members",
            field=models.PositiveIntegerField(default=1000),
        ),
    ]
