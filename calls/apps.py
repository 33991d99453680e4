from django.apps import AppConfig


class CallsConfig(AppConfig):
    """Tenant app: call signaling, call records, TURN credentials, group-call rooms."""

    name = "calls"
