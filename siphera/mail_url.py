"""`EMAIL_URL` -> Django's email settings (siphera.settings reads it once at start-up).

    console://                       print each mail to the process's stdout (development)
    smtp://user:pass@host:25         plain SMTP (STARTTLS not attempted)
    smtp+tls://user:pass@host:587    SMTP with STARTTLS
    smtps://user:pass@host:465       SMTP over TLS from the first byte
    dummy://                         accept and drop every mail

User and password are percent-decoded (`%40` for `@`). Plain Python: settings import it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_BACKENDS = {
    "console": "django.core.mail.backends.console.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "smtp+tls": "django.core.mail.backends.smtp.EmailBackend",
    "smtps": "django.core.mail.backends.smtp.EmailBackend",
}
_DEFAULT_PORTS = {"smtp": 25, "smtp+tls": 587, "smtps": 465}


def email_settings(url: str) -> dict:
    """Django settings (EMAIL_BACKEND, EMAIL_HOST, ...) for `url`; ValueError names what is
    wrong, so a typo stops the server at start-up instead of losing mail later."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _BACKENDS:
        raise ValueError(
            f"EMAIL_URL scheme {scheme!r} is not one of: {', '.join(sorted(_BACKENDS))}."
        )
    config: dict = {"EMAIL_BACKEND": _BACKENDS[scheme]}
    if scheme not in _DEFAULT_PORTS:
        return config
    if not parts.hostname:
        raise ValueError("EMAIL_URL needs a host, e.g. smtp+tls://user:pass@mail.example.com:587.")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("EMAIL_URL has an invalid port.") from None
    config.update(
        EMAIL_HOST=parts.hostname,
        EMAIL_PORT=port,
        EMAIL_HOST_USER=unquote(parts.username or ""),
        EMAIL_HOST_PASSWORD=unquote(parts.password or ""),
        EMAIL_USE_TLS=scheme == "smtp+tls",
        EMAIL_USE_SSL=scheme == "smtps",
    )
    return config
