from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Tenant app (one copy per org schema): users, devices, login grants, audit log."""

    name = "orgs.accounts"
    label = "accounts"
    default_auto_field = "django.db.models.BigAutoField"
