"""Single sign-on state of one org (tenant schema).

`IdentityProvider` is the org's one IdP (SAML 2.0 or OIDC), read and changed only through
orgs.sso.provider. `SsoRequest` is a sign-in in flight: it carries what the browser must
not be trusted with (the OIDC nonce and PKCE verifier, the client's redirect and code
challenge) and is used once. `UsedAssertion` keeps the ids of SAML assertions already
accepted until they expire, so a replayed one is refused.
"""

from django.db import models


class IdentityProvider(models.Model):
    SAML = "saml"
    OIDC = "oidc"
    KINDS = [(SAML, "SAML 2.0"), (OIDC, "OpenID Connect")]

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    kind = models.CharField(max_length=10, choices=KINDS)
    # Shown on the sign-in button: "Sign in with <display_name>".
    display_name = models.CharField(max_length=100, default="single sign-on")
    # Protocol settings (orgs.sso.saml / orgs.sso.oidc validate their own keys): the IdP's
    # entity id, endpoints and certificates, metadata URL; the OIDC issuer, client id,
    # discovery document and JWKS as last fetched.
    config = models.JSONField(default=dict)
    # The secret the server must read back (the OIDC client secret, the SAML SP's private
    # key), encrypted with the key ring (siphera.crypto). Never shown again once saved.
    secret_encrypted = models.TextField(blank=True)
    # Which received value identifies the person for good: "" is the SAML NameID or the
    # OIDC `sub`; otherwise the name of an attribute/claim (e.g. Entra's objectidentifier).
    # Users are bound to it (accounts.User.external_id), never to an e-mail address alone.
    subject_attribute = models.CharField(max_length=200, blank=True)
    # Where the profile comes from: {"username": ..., "email": ..., "display_name": ...,
    # "groups": ...}, each the name of an attribute/claim ("" or absent: not mapped).
    attribute_map = models.JSONField(default=dict)
    # Create an unknown person on first sign-in (just-in-time provisioning).
    jit_provisioning = models.BooleanField(default=True)
    # Bind an existing, not yet bound user whose username equals the mapped username on
    # their first SSO sign-in (opt-in: it trusts the IdP to own those names).
    link_by_username = models.BooleanField(default=False)
    # SAML: accept responses the IdP sends unasked (IdP-initiated). Off by default.
    allow_idp_initiated = models.BooleanField(default=False)
    # Accept the IdP's statement that it did multi-factor authentication (SAML
    # AuthnContextClassRef, OIDC `amr`/`acr`) in place of Siphera's own TOTP.
    trust_idp_mfa = models.BooleanField(default=False)
    # The last successful test sign-in, and what it received (shown in the portal). Password
    # login can be turned off only once a test sign-in succeeded for the current settings.
    tested_at = models.DateTimeField(null=True)
    test_result = models.JSONField(default=dict)
    metadata_refreshed_at = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="identity_provider_singleton")
        ]


class GroupRole(models.Model):
    """IdP group -> role, shared by SSO sign-ins (the groups attribute/claim) and SCIM
    (group membership). The first row by `position` whose group the person is in gives
    their role; when rows exist and none matches, "member". No rows: the IdP does not
    manage roles. Matching is by group name, case-insensitive."""

    position = models.PositiveIntegerField()
    group = models.CharField(max_length=255, unique=True)
    role = models.CharField(max_length=40)

    class Meta:
        ordering = ["position"]


class SsoRequest(models.Model):
    PORTAL = "portal"
    CLIENT = "client"
    TEST = "test"
    PURPOSES = [(PORTAL, "portal sign-in"), (CLIENT, "app sign-in"), (TEST, "test sign-in")]

    # The SAML AuthnRequest ID or the OIDC `state`: random, unguessable.
    id = models.CharField(max_length=100, primary_key=True)
    kind = models.CharField(max_length=10, choices=IdentityProvider.KINDS)
    purpose = models.CharField(max_length=10, choices=PURPOSES)
    # OIDC: the nonce the ID token must carry and the PKCE code verifier.
    nonce = models.CharField(max_length=100, blank=True)
    code_verifier = models.CharField(max_length=128, blank=True)
    # Portal: the local path to land on. Client: the app's redirect URI.
    return_to = models.CharField(max_length=2000, blank=True)
    # Client sign-ins (RFC 7636 S256): the app proves it started the sign-in when it
    # exchanges the one-time code for a login grant.
    code_challenge = models.CharField(max_length=128, blank=True)
    # Set once the IdP answered: sha256 of the one-time code handed to the app, and who.
    code_hash = models.CharField(max_length=64, blank=True, db_index=True)
    user = models.ForeignKey("accounts.User", null=True, on_delete=models.CASCADE)
    method = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True)


class UsedAssertion(models.Model):
    """A SAML assertion id already accepted; kept until the assertion expires."""

    assertion_id = models.CharField(max_length=255, unique=True)
    expires_at = models.DateTimeField(db_index=True)
