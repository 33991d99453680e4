"""The org directory, in the public schema: which orgs exist and which hosts they answer."""

from django.core.validators import RegexValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

SLUG_RE = r"^[a-z][a-z0-9-]{1,29}$"
slug_validator = RegexValidator(
    SLUG_RE, "2-30 characters: lower-case letters, digits and '-', starting with a letter."
)


class Org(TenantMixin):
    """One customer organisation; its data lives in its own PostgreSQL schema."""

    slug = models.CharField(max_length=30, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    auto_create_schema = True
    auto_drop_schema = False

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @staticmethod
    def schema_for_slug(slug: str) -> str:
        # A fixed prefix keeps org schemas clear of `public`, `pg_*` and other reserved names.
        return "o_" + slug.replace("-", "_")


class Domain(DomainMixin):
    """A host name that routes to an org (e.g. acme.example.com). Unique across orgs."""

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain
