"""Mail to people of an org: rendered from templates/email/ (subject, text and HTML) when
asked, sent by the Celery worker once the transaction commits, with retries
(orgs.tasks.send_mail). Nothing here talks SMTP inside a request.

Each mail `name` has three templates: `email/<name>.subject.txt`, `email/<name>.txt` and
`email/<name>.html`. Every template also gets `org` (the current org's slug and name).
A mail's body may carry a secret link (a password reset): it is never logged, only the
mail's name and how many recipients.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.template.loader import render_to_string

log = logging.getLogger("siphera.mail")


def render_mail(name: str, context: dict) -> dict:
    """The mail `name` rendered for `context`: {name, subject, text, html}."""
    tenant = getattr(connection, "tenant", None)
    full = {"org": {"slug": getattr(tenant, "slug", ""), "name": getattr(tenant, "name", "")}}
    full.update(context)
    subject = render_to_string(f"email/{name}.subject.txt", full)
    return {
        "name": name,
        # One line: a header may not carry a newline (Django refuses to send it).
        "subject": " ".join(subject.split()),
        "text": render_to_string(f"email/{name}.txt", full),
        "html": render_to_string(f"email/{name}.html", full),
    }


def addressee(user) -> dict:
    """What every mail to a person says about them: `name` (their display name, else
    their username) and `username`."""
    return {"name": user.display_name or user.username, "username": user.username}


def queue_mail(name: str, *, to: list[str], context: dict) -> None:
    """Render the mail `name` now and have the worker send it to `to` after this
    transaction commits (nothing is sent if it rolls back)."""
    from orgs.tasks import send_mail
    from siphera.tenancy import send_task

    message = render_mail(name, context) | {"to": list(to)}
    tenant = getattr(connection, "tenant", None)
    transaction.on_commit(lambda: send_task(send_mail, message, org=tenant))


def do_send(message: dict) -> int:
    """Send a rendered mail through the configured backend (EMAIL_URL); raises on an SMTP
    or network error so the task retries. Returns how many mails went out."""
    mail = EmailMultiAlternatives(
        subject=message["subject"],
        body=message["text"],
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=message["to"],
    )
    mail.attach_alternative(message["html"], "text/html")
    sent = mail.send(fail_silently=False)
    log.info("mail sent", extra={"mail": message["name"], "recipients": len(message["to"])})
    return sent
