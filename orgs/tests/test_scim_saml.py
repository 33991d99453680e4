"""SCIM and SAML meet in one identity core: a person the IdP provisioned over SCIM and who
then signs in by SAML (the real IdP of orgs/tests/saml_idp.py, the real server) is the same
user, bound by externalId or, without one, by userName; SCIM deactivation refuses them."""

from __future__ import annotations

from orgs.accounts.models import User
from orgs.tests.scim_support import Scim, patch_body, scim_token
from orgs.tests.test_saml import (  # noqa: F401 (fixtures)
    ADMINS,
    _honest_idp,
    assert_refused,
    idp,
    is_signed_in,
    other_idp,
    person,
    saml_org,
    sign_in,
    user_by_subject,
    user_count,
)


def test_a_scim_user_signing_in_by_saml_is_the_same_user(saml_org, idp, server):  # noqa: F811
    setup = saml_org()
    scim = Scim(server, setup.org, scim_token(setup.org))
    who = person(ADMINS)
    uid = who.attributes["uid"][0]
    created = scim.post("/Users", json={"userName": uid, "externalId": who.name_id})
    assert created.status_code == 201, created.text
    count = user_count(setup.org)

    idp.next_user = who
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    assert is_signed_in(browser)

    user = user_by_subject(setup.org, who.name_id)
    assert str(user.pk) == created.json()["id"] and user.source == User.SCIM
    assert user_count(setup.org) == count  # nobody was created at sign-in
    assert user.role == "admin"  # the sign-in's groups still give the role


def test_without_external_id_a_name_id_equal_to_the_username_finds_the_scim_user(
    saml_org,  # noqa: F811
    idp,  # noqa: F811
    server,
):
    setup = saml_org()
    scim = Scim(server, setup.org, scim_token(setup.org))
    who = person(ADMINS)
    created = scim.post("/Users", json={"userName": who.name_id})
    assert created.status_code == 201 and "externalId" not in created.json()
    count = user_count(setup.org)

    idp.next_user = who
    assert sign_in(setup.browser(server), idp).status_code == 302
    user = user_by_subject(setup.org, who.name_id)
    assert str(user.pk) == created.json()["id"] and user.username == who.name_id
    assert user_count(setup.org) == count


def test_a_user_scim_deactivated_is_refused_at_saml_sign_in_and_loses_the_session(
    saml_org,  # noqa: F811
    idp,  # noqa: F811
    server,
):
    setup = saml_org()
    scim = Scim(server, setup.org, scim_token(setup.org))
    who = person(ADMINS)
    created = scim.post(
        "/Users", json={"userName": who.attributes["uid"][0], "externalId": who.name_id}
    ).json()
    idp.next_user = who
    signed_in = setup.browser(server)
    assert sign_in(signed_in, idp).status_code == 302 and is_signed_in(signed_in)

    off = scim.patch(
        f"/Users/{created['id']}",
        json=patch_body({"op": "Replace", "path": "active", "value": "False"}),
    )
    assert off.status_code == 200, off.text

    assert not is_signed_in(signed_in)  # the portal session died with the deactivation
    browser = setup.browser(server)
    assert_refused(setup, sign_in(browser, idp), "user_inactive")
    assert not is_signed_in(browser)
