"""Mail through the real SMTP server of the run (tests/smtp.py) and the real worker:
invitations are mailed, as text and HTML, with a link that works."""

import time

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


def test_a_mail_the_smtp_server_refused_is_retried_until_it_arrives(_database, tmp_path):
    from orgs.tasks import send_mail
    from tests.fixtures import worker_with_env
    from tests.smtp import _free_port, smtp_server

    # Given a worker whose SMTP server is down (nothing listens on its port)
    port = _free_port()
    log = tmp_path / "worker.log"
    with worker_with_env(log, EMAIL_URL=f"smtp://127.0.0.1:{port}") as queue:
        message = {
            "name": "test",
            "subject": "Retried",
            "text": "hello",
            "html": "<p>hello</p>",
            "to": ["late@mail.test"],
        }
        send_mail.apply_async(args=[message], queue=queue)
        # When the first try fails and is scheduled again
        deadline = time.monotonic() + 30
        while "Retry in" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        # Then once the server is up, the retry delivers the mail
        with smtp_server(port) as box:
            arrived = box.wait_for("late@mail.test", timeout=40)
    assert arrived["Subject"] == "Retried"
    assert "hello" in bodies(arrived)[0]
