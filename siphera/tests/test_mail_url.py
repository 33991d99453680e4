"""EMAIL_URL -> Django's email settings (siphera.mail_url). Needs no server."""

import pytest

from siphera.mail_url import email_settings


def test_console_is_the_development_default_shape():
    assert email_settings("console://") == {
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"
    }


def test_smtp_with_starttls_and_percent_encoded_credentials():
    config = email_settings("smtp+tls://me%40example.com:p%3Ass@mail.example.com:2525")
    assert config == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "mail.example.com",
        "EMAIL_PORT": 2525,
        "EMAIL_HOST_USER": "me@example.com",
        "EMAIL_HOST_PASSWORD": "p:ss",
        "EMAIL_USE_TLS": True,
        "EMAIL_USE_SSL": False,
    }


@pytest.mark.parametrize(
    ("url", "port", "tls", "ssl"),
    [
        ("smtp://relay", 25, False, False),
        ("smtp+tls://relay", 587, True, False),
        ("smtps://relay", 465, False, True),
    ],
)
def test_default_ports_and_tls_modes(url, port, tls, ssl):
    config = email_settings(url)
    assert (config["EMAIL_PORT"], config["EMAIL_USE_TLS"], config["EMAIL_USE_SSL"]) == (
        port,
        tls,
        ssl,
    )
    assert config["EMAIL_HOST_USER"] == config["EMAIL_HOST_PASSWORD"] == ""


@pytest.mark.parametrize("url", ["http://mail", "smtp://", "smtp://host:99999", "mail.example.com"])
def test_a_bad_url_is_refused_with_a_message(url):
    with pytest.raises(ValueError, match="EMAIL_URL"):
        email_settings(url)
