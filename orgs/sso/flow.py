"""An SSO sign-in from start to login grant, whatever the protocol.

1. `do_start_request` keeps what the sign-in must remember (the OIDC nonce and PKCE
   verifier, where to land, the app's code challenge) in an `SsoRequest` row keyed by the
   SAML AuthnRequest ID or the OIDC `state`: the IdP's answer arrives in a cross-site
   request that may carry no session cookie (PITFALLS 12), so the row, not the session,
   is the state.
2. The answer names its request; `check_take_request` uses the row up, once.
3. For an app sign-in (`purpose=client`), `do_issue_client_code` hands the browser a
   one-time code for the app's redirect URI, and the app exchanges it with its PKCE
   verifier (`check_exchange_code`) for the same single-use login grant a password login
   gives: the grant itself never appears in a URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.accounts.models import User
from orgs.services import audit, auth, mfa, tokens
from orgs.sso.models import IdentityProvider, SsoRequest, UsedAssertion
from siphera.api_errors import ApiError

CLIENT_CODE_PREFIX = "sph_c_"  # noqa: S105 (a prefix, not a secret)
PURPOSES = (SsoRequest.PORTAL, SsoRequest.CLIENT, SsoRequest.TEST)
_CHALLENGE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def request_ttl() -> timedelta:
    return timedelta(seconds=settings.SSO_REQUEST_TTL_SECONDS)


# --- requests in flight ------------------------------------------------------------------------


def check_client_redirect_uri(uri: str) -> str:
    """An app's redirect URI, or 400 `invalid_redirect_uri`. Allowed (RFC 8252): a loopback
    `http://127.0.0.1:<port>/...`, `http://[::1]:<port>/...` or `http://localhost:<port>/...`,
    and the private-use schemes the operator lists in SSO_CLIENT_REDIRECT_SCHEMES. Never an
    arbitrary web site: the code would go to whoever runs it."""
    uri = (uri or "").strip()
    parts = urlsplit(uri)
    if len(uri) > 2000 or parts.fragment:
        raise ApiError(400, "invalid_redirect_uri", "The redirect URI is too long or has a #.")
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return uri
    if parts.scheme and parts.scheme in settings.SSO_CLIENT_REDIRECT_SCHEMES:
        return uri
    raise ApiError(
        400,
        "invalid_redirect_uri",
        "An app's redirect URI is a loopback http://127.0.0.1:<port>/ address or one of the "
        "app schemes this server allows.",
    )


def check_code_challenge(challenge: str) -> str:
    """A PKCE S256 code challenge (43 base64url characters), or 400."""
    challenge = (challenge or "").strip()
    if len(challenge) != 43 or not set(challenge) <= _CHALLENGE_CHARS:
        raise ApiError(
            400,
            "invalid_code_challenge",
            "code_challenge is the base64url SHA-256 of the app's code verifier (RFC 7636 S256).",
        )
    return challenge


def do_start_request(
    *,
    kind: str,
    purpose: str,
    request_id: str | None = None,
    return_to: str = "",
    code_challenge: str = "",
    nonce: str = "",
    code_verifier: str = "",
) -> SsoRequest:
    """Remember a sign-in about to go to the IdP. `request_id` is the SAML AuthnRequest ID;
    without one a random id is made (the OIDC `state`). Expired rows of earlier sign-ins
    are swept here, a few at a time, so the table stays small without a job."""
    if purpose not in PURPOSES:
        raise ValueError(purpose)
    now = timezone.now()
    stale = SsoRequest.objects.filter(expires_at__lt=now).values_list("pk", flat=True)[:50]
    SsoRequest.objects.filter(pk__in=list(stale)).delete()
    return SsoRequest.objects.create(
        id=request_id or secrets.token_urlsafe(32),
        kind=kind,
        purpose=purpose,
        return_to=return_to,
        code_challenge=code_challenge,
        nonce=nonce,
        code_verifier=code_verifier,
        expires_at=now + request_ttl(),
    )


def check_take_request(request_id: str, *, kind: str) -> SsoRequest:
    """The sign-in this IdP answer belongs to, marked used. 400 `sso_request_unknown` when
    it is unknown, of another protocol, expired or already answered (a replayed answer, or
    one meant for another org: ids are per org schema)."""
    with transaction.atomic():
        row = (
            SsoRequest.objects.select_for_update()
            .filter(pk=(request_id or "")[:100], kind=kind)
            .first()
        )
        if row is None or row.used_at is not None or row.expires_at <= timezone.now():
            raise ApiError(
                400,
                "sso_request_unknown",
                "This sign-in is unknown, expired or already finished; start again.",
            )
        row.used_at = timezone.now()
        row.save(update_fields=["used_at"])
    return row


def check_not_replayed(assertion_id: str, not_on_or_after: datetime | None) -> None:
    """Remember a SAML assertion id until it expires; 403 `sso_replayed` if it was seen."""
    if not assertion_id:
        raise ApiError(403, "sso_invalid_response", "The assertion has no ID.")
    now = timezone.now()
    floor = now + timedelta(seconds=settings.SAML_CLOCK_SKEW_SECONDS)
    expires = max(not_on_or_after or floor, floor)
    UsedAssertion.objects.filter(expires_at__lt=now).delete()
    try:
        with transaction.atomic():
            UsedAssertion.objects.create(assertion_id=assertion_id[:255], expires_at=expires)
    except IntegrityError:
        raise ApiError(403, "sso_replayed", "This sign-in response was already used.") from None


# --- app sign-ins: one-time code -> login grant --------------------------------------------------


def do_issue_client_code(sso_request: SsoRequest, user: User, *, method: str) -> str:
    """The URL that hands the app its one-time code (valid as long as the sign-in was)."""
    code, code_hash = tokens.new_secret(CLIENT_CODE_PREFIX)
    SsoRequest.objects.filter(pk=sso_request.pk).update(
        code_hash=code_hash,
        user=user,
        method=method,
        expires_at=timezone.now() + timedelta(seconds=settings.LOGIN_GRANT_TTL_SECONDS),
    )
    parts = urlsplit(sso_request.return_to)
    query = (parts.query + "&" if parts.query else "") + urlencode({"code": code})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_exchange_code(
    code: str, code_verifier: str, *, otp: str | None, actor: audit.Actor
) -> tuple[str, int]:
    """Exchange an app's one-time SSO code for a login grant: (grant, expires_in).

    401 `invalid_code` when the code is unknown, used, expired or the verifier does not
    match its challenge (all alike: the answer tells an attacker nothing). Where the org
    requires TOTP of this user and does not trust (or did not get) the IdP's MFA, the
    exchange asks for `otp` exactly as a password login does (`otp_required`,
    `invalid_otp`, `mfa_enrollment_required`) and the code stays good for the retry.
    Failed exchanges count against the client IP's login budget (auth.ip_attempt).
    """
    with auth.ip_attempt(actor):
        return _exchange(code, code_verifier, otp=otp, actor=actor)


def _exchange(code, code_verifier, *, otp: str | None, actor: audit.Actor) -> tuple[str, int]:
    invalid = ApiError(401, "invalid_code", "The sign-in code is unknown, used or expired.")
    if not isinstance(code, str) or not code.startswith(CLIENT_CODE_PREFIX):
        raise invalid
    if not isinstance(code_verifier, str) or not 43 <= len(code_verifier) <= 128:
        raise invalid
    with transaction.atomic():
        row = (
            SsoRequest.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(code_hash=tokens.hash_secret(code), purpose=SsoRequest.CLIENT)
            .first()
        )
        if (
            row is None
            or row.user is None
            or row.expires_at <= timezone.now()
            or not row.user.is_active
            or not hmac.compare_digest(_s256(code_verifier), row.code_challenge)
        ):
            raise invalid
        user = row.user
        actor = actor.with_user(user)
        method = row.method
        if not method.endswith("+idp_mfa"):
            second = mfa.check_login_second_factor(user, otp, actor=actor, first=method)
            method = second
        row.code_hash = ""
        row.save(update_fields=["code_hash"])
        return auth.do_issue_grant(user, method=method, actor=actor)


def method_for(idp: IdentityProvider, *, idp_mfa: bool) -> str:
    """The login method recorded for an SSO sign-in: "saml"/"oidc", with "+idp_mfa" where
    the org trusts the IdP's multi-factor statement and the IdP made it."""
    return idp.kind + ("+idp_mfa" if idp_mfa and idp.trust_idp_mfa else "")
