from django.apps import AppConfig


class E911Config(AppConfig):
    """Tenant app: emergency locations and the emergency call flow (not built yet)."""

    name = "e911"
