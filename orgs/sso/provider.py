"""The org's identity provider: set up, shown, tested, removed.

The protocol modules (orgs.sso.saml, orgs.sso.oidc) validate their own `config` keys
(`check_config`) and say what may be shown (`public_config`); this module owns the
settings every protocol shares, the audit trail, and the rules that tie the IdP to the
org's sign-in policy:

- SSO sign-in (`OrgPolicy.sso_login`) can be on only while an IdP is set up;
- password sign-in can be turned off only once a test sign-in through the IdP succeeded
  with its current settings (orgs.services.policy asks `is_tested`);
- changing the IdP's protocol settings asks for a new test sign-in.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any

from django.db import transaction
from django.utils import timezone

from orgs.accounts.models import OrgPolicy
from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.services.mfa import forget_cached_policy
from orgs.sso.models import GroupRole, IdentityProvider
from orgs.sso.provisioning import Assertion
from siphera import crypto
from siphera.api_errors import ApiError

PROTOCOLS = {IdentityProvider.SAML: "orgs.sso.saml", IdentityProvider.OIDC: "orgs.sso.oidc"}
ATTRIBUTE_KEYS = ("username", "email", "display_name", "groups")
FLAGS = ("jit_provisioning", "link_by_username", "allow_idp_initiated", "trust_idp_mfa")
# Settings whose change makes the last test sign-in say nothing about the new ones.
_RETEST = ("kind", "config", "secret", "subject_attribute", "attribute_map")
# How much of a test sign-in's attributes is kept to show: enough to map, not a dump.
_TEST_VALUES_MAX = 20
_TEST_VALUE_CHARS = 200


def protocol(kind: str) -> ModuleType:
    return import_module(PROTOCOLS[kind])


def get_provider() -> IdentityProvider | None:
    return IdentityProvider.objects.filter(pk=1).first()


def access_provider() -> IdentityProvider:
    """The org's IdP, or 404 `sso_not_configured`."""
    idp = get_provider()
    if idp is None:
        raise ApiError(404, "sso_not_configured", "Single sign-on is not set up for this org.")
    return idp


def is_tested(idp: IdentityProvider | None = None) -> bool:
    idp = idp if idp is not None else get_provider()
    return idp is not None and idp.tested_at is not None


def public_view(idp: IdentityProvider) -> dict[str, Any]:
    """The IdP's settings as the API and portal show them (never the secret)."""
    return {
        "kind": idp.kind,
        "display_name": idp.display_name,
        "config": protocol(idp.kind).public_config(idp),
        "has_secret": bool(idp.secret_encrypted),
        "subject_attribute": idp.subject_attribute,
        "attribute_map": idp.attribute_map,
        **{flag: getattr(idp, flag) for flag in FLAGS},
        "group_roles": [{"group": r.group, "role": r.role} for r in GroupRole.objects.all()],
        "tested_at": idp.tested_at,
        "test_result": idp.test_result,
        "metadata_refreshed_at": idp.metadata_refreshed_at,
        "updated_at": idp.updated_at,
    }


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_sso_config", message)


def _clean_common(data: dict[str, Any], idp: IdentityProvider | None) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    if "display_name" in data:
        name = data["display_name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise _invalid("display_name is 1-100 characters.")
        clean["display_name"] = name.strip()
    if "subject_attribute" in data:
        value = data["subject_attribute"]
        if not isinstance(value, str) or len(value) > 200:
            raise _invalid("subject_attribute is an attribute name (at most 200 characters).")
        clean["subject_attribute"] = value.strip()
    if "attribute_map" in data:
        mapping = data["attribute_map"]
        if not isinstance(mapping, dict) or not set(mapping) <= set(ATTRIBUTE_KEYS):
            raise _invalid(f"attribute_map maps some of {', '.join(ATTRIBUTE_KEYS)}.")
        if not all(isinstance(v, str) and len(v) <= 200 for v in mapping.values()):
            raise _invalid("attribute_map values are attribute names (at most 200 characters).")
        clean["attribute_map"] = {k: v.strip() for k, v in mapping.items() if v.strip()}
    for flag in FLAGS:
        if flag in data:
            if not isinstance(data[flag], bool):
                raise _invalid(f"{flag} is true or false.")
            clean[flag] = data[flag]
    return clean


def check_configure(data: dict[str, Any], *, actor: audit.Actor) -> IdentityProvider:
    """Set up the org's IdP or change it. `kind` is required the first time (and to switch
    protocol); `config` goes to the protocol's `check_config`, which may fetch metadata or
    discovery. 400 `invalid_sso_config` with nothing saved on any bad value. Audited
    `sso.configured` with the names of the settings changed (never their secret values)."""
    if not isinstance(data, dict):
        raise _invalid("Send a JSON object.")
    known = {"kind", "config", "secret", "display_name", "subject_attribute", "attribute_map"}
    known.update(FLAGS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise _invalid(f"Unknown settings: {', '.join(unknown)}.")
    existing = get_provider()
    kind = data.get("kind", existing.kind if existing else None)
    if kind not in PROTOCOLS:
        raise _invalid(f"kind is one of: {', '.join(PROTOCOLS)}.")
    switching = existing is not None and existing.kind != kind
    secret = data.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) > 20000):
        raise _invalid("secret is a string.")
    changes = _clean_common(data, existing)
    if "config" in data or existing is None or switching:
        raw = data.get("config")
        if not isinstance(raw, dict):
            raise _invalid("config is an object with the protocol's settings.")
        config, new_secret = protocol(kind).check_config(
            raw, secret, existing=None if switching else existing
        )
        changes["config"] = config
        if new_secret is not None:
            changes["secret"] = new_secret
        elif switching:
            changes["secret"] = ""
    elif secret is not None:
        # A new secret alone (an OIDC client secret rotated, a SAML key) is checked with
        # the settings as they stand, so the two can never disagree.
        module = protocol(kind)
        config, new_secret = module.check_config(
            module.public_config(existing), secret, existing=existing
        )
        changes["config"] = config
        changes["secret"] = new_secret if new_secret is not None else secret
    return do_configure(kind, changes, actor=actor)


def do_configure(kind: str, changes: dict[str, Any], *, actor: audit.Actor) -> IdentityProvider:
    with transaction.atomic():
        idp = IdentityProvider.objects.select_for_update().filter(pk=1).first()
        created = idp is None
        if created:
            idp = IdentityProvider(pk=1, kind=kind)
        changed = ["kind"] if idp.kind != kind else []
        idp.kind = kind
        for name, value in changes.items():
            if name == "secret":
                idp.secret_encrypted = crypto.encrypt(value) if value else ""
                changed.append("secret")
            elif getattr(idp, name) != value:
                setattr(idp, name, value)
                changed.append(name)
        if created or set(changed) & set(_RETEST):
            idp.tested_at = None
            idp.test_result = {}
        if created or changed:
            idp.save()
            audit.record(
                AuditEvent.SSO_CONFIGURED,
                actor=actor,
                target_type="identity_provider",
                target_id=kind,
                data={"created": created, "changed": sorted(set(changed))},
            )
    return idp


def check_remove(*, actor: audit.Actor) -> None:
    """Remove the IdP: SSO sign-in turns off with it. 409 `sso_in_use` while password
    sign-in is off (nobody but owners could sign in); 404 when none is set up."""
    from orgs.services.mfa import get_org_policy

    access_provider()
    policy = get_org_policy()
    if not policy.password_login:
        raise ApiError(
            409,
            "sso_in_use",
            "Password sign-in is off: turn it back on before removing single sign-on.",
        )
    with transaction.atomic():
        IdentityProvider.objects.filter(pk=1).delete()
        OrgPolicy.objects.filter(pk=1).update(sso_login=False)
        forget_cached_policy()  # a bulk update sends no post_save (orgs.apps)
        audit.record(AuditEvent.SSO_REMOVED, actor=actor, target_type="identity_provider")
        if policy.sso_login:
            audit.record(
                AuditEvent.ORG_POLICY_CHANGED,
                actor=actor,
                target_type="org_policy",
                target_id="sso_login",
                data={"field": "sso_login", "before": True, "after": False},
            )


def do_record_test(idp: IdentityProvider, assertion: Assertion, *, actor: audit.Actor) -> dict:
    """A test sign-in got through the protocol checks: keep what it received (so the admin
    can map attributes) and mark the current settings tested. Audited `sso.tested`."""
    attributes = {
        name[:_TEST_VALUE_CHARS]: [str(v)[:_TEST_VALUE_CHARS] for v in values[:_TEST_VALUES_MAX]]
        for name, values in list(assertion.attributes.items())[:100]
    }
    result = {
        "subject": assertion.subject[:255],
        "attributes": attributes,
        "mfa": assertion.mfa,
    }
    now = timezone.now()
    IdentityProvider.objects.filter(pk=idp.pk).update(tested_at=now, test_result=result)
    audit.record(
        AuditEvent.SSO_TESTED,
        actor=actor,
        target_type="identity_provider",
        target_id=idp.kind,
        data={"subject": result["subject"], "attributes": sorted(attributes)},
    )
    return result
