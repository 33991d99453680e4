from django.apps import AppConfig


class SsoConfig(AppConfig):
    """Tenant app: the org's single sign-on provider (SAML 2.0 or OpenID Connect) and the
    short-lived state of sign-ins in flight."""

    name = "orgs.sso"
    label = "sso"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from siphera.encrypted_at_rest import register_encrypted_field

        # The OIDC client secret / SAML SP private key: re-encrypted by the key-rotation job.
        register_encrypted_field("sso.IdentityProvider", "secret_encrypted")
