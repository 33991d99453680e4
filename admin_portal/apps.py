from django.apps import AppConfig


class AdminPortalConfig(AppConfig):
    """Tenant app: the server-rendered admin portal (views and forms; templates/ at the top)."""

    name = "admin_portal"
