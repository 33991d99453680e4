from django.apps import AppConfig


class CallsConfig(AppConfig):
    """Tenant app: call signaling, call records, TURN credentials, group-call rooms."""

    name = "calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from calls.consumers import CallsSocket
        from calls.services import compliance, signaling
        from orgs import hooks
        from siphera import sockets

        sockets.register(CallsSocket)
        hooks.device_revoked.register(signaling.on_device_revoked)
        hooks.in_call.register(signaling.in_a_call)
        compliance.register()
        # Compliance recordings: the wrapped data key of each blob, the held answer, the
        # transcript (key-ring tokens; rotate_keys re-encrypts them, never the blobs).
        from siphera.encrypted_at_rest import register_encrypted_field

        for column in ("data_key_encrypted", "held_accept_encrypted", "transcript_encrypted"):
            register_encrypted_field("calls.Recording", column)
