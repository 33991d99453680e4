from django.apps import AppConfig


class MessagingConfig(AppConfig):
    """Tenant app: key directory, conversations, messages, device queues."""

    name = "messaging"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from messaging.api.conversation_views import MessagesView, send_message
        from messaging.consumers import MessagingSocket
        from messaging.services import compliance
        from messaging.services.conversations import on_user_deactivated, share_a_conversation
        from messaging.services.devices import on_device_revoked
        from orgs import hooks
        from siphera import fast_http, sockets

        sockets.register(MessagingSocket)
        hooks.device_revoked.register(on_device_revoked)
        hooks.are_contacts.register(share_a_conversation)
        hooks.user_deactivated.register(on_user_deactivated)
        compliance.register()
        # REST sends without Django's request machinery (siphera.fast_http).
        fast_http.route(
            "send",
            "POST",
            r"/api/v1/conversations/(?P<conversation_id>[^/]+)/messages",
            view=MessagesView,
        )(send_message)
