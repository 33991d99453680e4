from django.apps import AppConfig


class MessagingConfig(AppConfig):
    """Tenant app: key directory, conversations, messages, device queues."""

    name = "messaging"
    default_auto_field = "django.db.models.BigAutoField"
