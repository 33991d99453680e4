from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Tenant app (one copy per org schema): users, devices, login grants, audit log."""

    name = "orgs.accounts"
    label = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from siphera.encrypted_at_rest import register_encrypted_field

        # TOTP seeds (orgs.services.mfa): re-encrypted by the key-rotation job.
        register_encrypted_field("accounts.TotpFactor", "secret_encrypted")
