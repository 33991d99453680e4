"""Mail through the real SMTP server of the run (tests/smtp.py) and the real worker:
invitations are mailed, as text and HTML, with a link that works."""

from tests.smtp import bodies, link_in


def test_an_invitation_is_mailed_when_the_invitee_has_an_address(
    org_a, new_session, mailbox, celery_worker
):
    admin = new_session(org_a, role="admin")
    address = f"new-{admin.user.username}@mail.test"
    response = admin.api.post(
        "/api/v1/users",
        json={"username": f"inv-{admin.user.username}", "email": address, "display_name": "Neo"},
    )
    assert response.status_code == 201, response.text
    message = mailbox.wait_for(address, subject="You are invited")
    text, html = bodies(message)
    assert "Hello Neo" in text and "7 days" in text
    assert "Choose your password" in html
    assert message["From"] == "Siphera <noreply@localhost>"
    link = link_in(message, r"/portal/invite/sph_i_")
    # The mailed link is the one the admin was shown, and it opens the invitation page.
    assert link.endswith(response.json()["invitation_url"].split("/portal/", 1)[1])
    path = "/portal/" + link.split("/portal/", 1)[1]
    assert admin.api.get(path).status_code == 200


def test_an_invitation_without_an_address_sends_nothing(org_a, new_session, mailbox):
    admin = new_session(org_a, role="admin")
    username = f"nomail-{admin.user.username}"
    response = admin.api.post("/api/v1/users", json={"username": username})
    assert response.status_code == 201
    assert not [m for m in mailbox.messages if username in (m.get_body().get_content())]


def test_a_refused_invitation_sends_no_mail(org_a, new_session, mailbox, celery_worker):
    admin = new_session(org_a, role="admin")
    address = f"dup-{admin.user.username}@mail.test"
    # The username is taken: the invitation is refused and nothing is mailed.
    response = admin.api.post(
        "/api/v1/users", json={"username": admin.user.username, "email": address}
    )
    assert response.status_code == 409
    probe = f"probe-{admin.user.username}@mail.test"
    admin.api.post("/api/v1/users", json={"username": f"p-{admin.user.username}", "email": probe})
    mailbox.wait_for(probe)  # a later mail arrived, so the worker had time for the first
    assert mailbox.to(address) == []
