"""siphera.csrf: the templates' CSRF tokens are Django's own (the unchanged middleware
accepts them), masked anew per render, drawn from one random read each."""

from __future__ import annotations

import collections
import os

from django.middleware.csrf import (
    CSRF_ALLOWED_CHARS,
    CSRF_SECRET_LENGTH,
    CSRF_TOKEN_LENGTH,
    _check_token_format,
    _unmask_cipher_token,
)
from django.test import RequestFactory

from siphera import csrf


def test_a_token_unmasks_to_the_requests_secret_and_is_masked_anew_each_time():
    request = RequestFactory().get("/portal/")
    request.META["CSRF_COOKIE"] = secret = csrf.random_string()
    first, second = csrf.get_token(request), csrf.get_token(request)
    for token in (first, second):
        _check_token_format(token)  # raises on a malformed token
        assert len(token) == CSRF_TOKEN_LENGTH
        assert _unmask_cipher_token(token) == secret
    assert first != second
    assert request.META["CSRF_COOKIE_NEEDS_UPDATE"] is True  # the cookie is renewed


def test_a_request_without_a_secret_gets_a_new_one_set_as_its_cookie():
    request = RequestFactory().get("/portal/login")
    token = csrf.get_token(request)
    secret = request.META["CSRF_COOKIE"]
    assert len(secret) == CSRF_SECRET_LENGTH
    assert set(secret) <= set(CSRF_ALLOWED_CHARS)
    assert _unmask_cipher_token(token) == secret
    assert request.META["CSRF_COOKIE_NEEDS_UPDATE"] is True


def test_each_random_string_is_one_read_of_the_os_random_source(monkeypatch):
    reads = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: reads.append(n) or real(n))
    request = RequestFactory().get("/portal/login")
    csrf.get_token(request)  # a new secret and a mask
    assert len(reads) <= 4  # 2, or one more for either in the rare case of dropped bytes


def test_every_character_of_the_alphabet_comes_out_about_equally_often():
    # Bytes past 247 are dropped rather than folded onto the first 8 characters, which
    # would make those 25 % likelier. 62,000 characters: each expected 1,000 times.
    counts = collections.Counter("".join(csrf.random_string(62) for _ in range(1000)))
    assert set(counts) == set(CSRF_ALLOWED_CHARS)
    assert max(counts.values()) < 1150 and min(counts.values()) > 850
