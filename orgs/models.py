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


class KeyRotationRun(models.Model):
    """One run of the re-encryption job (orgs.services.key_rotation): moving every secret
    at rest to the key `key_id`. A run killed half way is resumed from its checkpoints by
    the next run for the same key; a newer active key supersedes it."""

    RUNNING = "running"
    DONE = "done"
    SUPERSEDED = "superseded"
    STATES = [(RUNNING, "running"), (DONE, "done"), (SUPERSEDED, "superseded")]

    key_id = models.CharField(max_length=16)
    # The org schemas it covers, comma-separated ("": every org and the public schema).
    scope = models.TextField(blank=True)
    state = models.CharField(max_length=12, choices=STATES, default=RUNNING)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-id"]


class KeyRotationCheckpoint(models.Model):
    """How far a run got through one encrypted field (or blob store) of one org: the last
    primary key (or blob name) done, committed in the same transaction as the batch it
    re-encrypted, so a killed run resumes exactly there."""

    run = models.ForeignKey(KeyRotationRun, on_delete=models.CASCADE, related_name="checkpoints")
    schema = models.CharField(max_length=63)
    target = models.CharField(max_length=200)  # "app.Model.field" or "blobs:<store>"
    after = models.TextField(blank=True)  # the last key done ("" before the first batch)
    total = models.PositiveBigIntegerField(default=0)  # rows when the target was started
    scanned = models.PositiveBigIntegerField(default=0)
    rotated = models.PositiveBigIntegerField(default=0)
    unreadable = models.PositiveBigIntegerField(default=0)  # no key of the ring opens them
    done = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "schema", "target"], name="key_rotation_checkpoint_unique"
            )
        ]
