from django.apps import AppConfig


class OrgsConfig(AppConfig):
    """Shared app (public schema): the org directory — Org (tenant) and Domain."""

    name = "orgs"
    default_auto_field = "django.db.models.BigAutoField"
