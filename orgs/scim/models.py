"""SCIM state of one org (tenant schema).

`ScimToken`: the IdP's bearer tokens (sha256 only; one live at a time). `ScimUser`: what a
SCIM User carries that accounts.User does not (name parts, e-mails, phone numbers,
addresses, the enterprise extension...) plus the version its ETag is made of; the user's
username, external id, active flag, display name and primary e-mail stay on accounts.User,
which this mirrors. `ScimGroup`: an IdP group and its members; group names map to roles
through orgs.sso's GroupRole.
"""

import uuid

from django.conf import settings
from django.db import models


class ScimToken(models.Model):
    label = models.CharField(max_length=100)
    # sha256 of the token (orgs.services.tokens); the token itself is shown once.
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters after the prefix, so an admin can tell tokens apart.
    hint = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Updated at most once a minute (a push of 10,000 users must not write it each time).
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class ScimUser(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="scim"
    )
    # The SCIM attributes of the user other than id, userName, externalId, active, groups
    # and meta, as last written by the IdP (canonical attribute names; the enterprise
    # extension under its URN).
    data = models.JSONField(default=dict)
    # The IdP sent no externalId: User.external_id holds the userName (so an SSO subject
    # equal to the userName finds this user) and SCIM shows no externalId.
    external_id_from_username = models.BooleanField(default=False)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField()
    # Set by a SCIM DELETE: the user is deactivated and gone from SCIM (404).
    deleted_at = models.DateTimeField(null=True, blank=True, db_index=True)


class ScimGroup(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    display_name = models.CharField(max_length=255)
    # casefold(display_name): group names are unique regardless of case (they name roles).
    name_key = models.CharField(max_length=255, unique=True)
    external_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="scim_groups", blank=True
    )
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]
