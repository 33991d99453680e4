"""Test set-up for single sign-on that is not about an IdP: an org whose IdP is set up and
passed a test sign-in, without running an IdP (the SAML and OIDC tests run real ones)."""

from __future__ import annotations

from orgs.services import audit
from orgs.sso import provider
from orgs.sso.provisioning import Assertion
from siphera.tenancy import in_tenant


def idp_passed_a_test(org, *, kind: str = "oidc"):
    """Store an IdP row for `org` as a successful test sign-in leaves it."""

    def setup():
        idp = provider.do_configure(
            kind,
            {
                "display_name": "Test IdP",
                "config": {"issuer": "https://idp.invalid", "client_id": "siphera"},
            },
            actor=audit.Actor.system("tests"),
        )
        provider.do_record_test(
            idp, Assertion(subject="tester", attributes={}), actor=audit.Actor.system("tests")
        )
        return idp

    return in_tenant(org, setup)
