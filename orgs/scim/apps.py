from django.apps import AppConfig


class ScimConfig(AppConfig):
    """Tenant app: the org's SCIM bearer tokens, the SCIM data of its users that
    accounts.User does not hold, and its SCIM groups."""

    name = "orgs.scim"
    label = "scim"
    default_auto_field = "django.db.models.BigAutoField"
