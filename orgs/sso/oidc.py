"""OpenID Connect sign-in for one org: authorization code flow with PKCE (S256).

Set-up (`check_config`) reads the IdP's discovery document at
`<issuer>/.well-known/openid-configuration` and its JWKS, and keeps what a sign-in needs in
`IdentityProvider.config`: the endpoints, the signing algorithms the IdP advertises, the
token endpoint's client authentication and the public keys as last fetched.

A sign-in (`begin`) goes to the authorization endpoint with `state` (the `SsoRequest` id),
a `nonce` and a PKCE challenge; the row keeps the nonce and the verifier, never the browser.
The callback (`complete`) uses the row up, checks that the browser which started the
sign-in is the one finishing it (a hash of the state in its session: no login CSRF),
exchanges the code at the token endpoint and verifies the ID token: its signature against
the IdP's keys (an unknown `kid` fetches the JWKS again, at most once per
OIDC_JWKS_MIN_REFETCH_SECONDS per org, so a forged token cannot make us hammer the IdP;
keys older than OIDC_JWKS_MAX_AGE_SECONDS are fetched again too, so a key the IdP
withdrew stops verifying), `iss`, `aud`/`azp`, `exp`/`iat` within OIDC_CLOCK_SKEW_SECONDS,
and the `nonce`. Only asymmetric algorithms the IdP advertises are accepted: never `none`,
never HS* (whose key would be the client secret). The claims become
a protocol-neutral `Assertion` for orgs.sso.provisioning.

Errors from the IdP (unreachable, an HTTP error, a body that is not JSON or too big) are a
400 `invalid_sso_config` at set-up and a 502 `sso_idp_error` during a sign-in; a token
that fails a check is a 403 with a code saying which (`sso_invalid_signature`, ...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.sso import flow
from orgs.sso.models import IdentityProvider, SsoRequest
from orgs.sso.provisioning import Assertion
from siphera import crypto, outbound, ratelimit
from siphera.api_errors import ApiError

DISCOVERY_PATH = "/.well-known/openid-configuration"
# Discovery, JWKS, token and userinfo answers are small; anything bigger is refused unread.
MAX_RESPONSE_BYTES = 256 * 1024
MAX_ID_TOKEN_CHARS = 16 * 1024
MAX_KEYS = 50
# Asymmetric signatures only: HS* would make the client secret (or, with a confused
# verifier, a public key) the MAC key, and `none` is no signature at all.
SAFE_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
# `amr` values (RFC 8176) that say more than a password was used.
DEFAULT_MFA_AMR = ("mfa", "mca", "otp", "hwk", "sc", "sms", "tel")
DEFAULT_SCOPES = ("openid", "profile", "email")
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Discovery keys kept in config (and shown by public_config).
_ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "userinfo_endpoint",
    "end_session_endpoint",
)
# What an admin may send in `config`; the rest of what public_config shows is derived from
# discovery, so a GET -> edit -> PUT round trip is accepted and those keys ignored.
_INPUT_KEYS = {
    "issuer",
    "client_id",
    "scopes",
    "public_client",
    "use_userinfo",
    "mfa_amr_values",
    "mfa_acr_values",
}
_DERIVED_KEYS = {
    *_ENDPOINTS,
    "signing_algorithms",
    "client_auth",
    "key_ids",
    "jwks_fetched_at",
    "redirect_path",
}
_SCOPE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:/")


class IdpError(Exception):
    """The IdP could not be asked or answered nonsense (message safe to show an admin)."""


# --- talking to the IdP ------------------------------------------------------------------------


def _check_url(value: Any, what: str) -> str:
    """An absolute https URL (http too where OIDC_ALLOW_HTTP, for development), or raise
    IdpError."""
    try:
        return outbound.check_url(value, what, allow_http=settings.OIDC_ALLOW_HTTP)
    except outbound.OutboundError as exc:
        raise IdpError(str(exc)) from None


def _json(answer: outbound.Answer, what: str) -> Any:
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError):
        raise IdpError(f"The {what} is not JSON (HTTP {answer.status}).") from None


def _request_json(
    method: str, url: str, what: str, *, ok_statuses=(200,), **kwargs
) -> tuple[int, Any]:
    """(status, JSON body) of one request to the IdP (siphera.outbound: public addresses
    only unless allowed, no redirects, bounded time and size); IdpError when it cannot be
    had."""
    try:
        answer = outbound.request(
            method,
            url,
            what=f"The {what}",
            timeout=settings.OIDC_HTTP_TIMEOUT_SECONDS,
            max_bytes=MAX_RESPONSE_BYTES,
            allow_http=settings.OIDC_ALLOW_HTTP,
            **kwargs,
        )
    except outbound.OutboundError as exc:
        raise IdpError(str(exc)) from None
    if answer.status not in ok_statuses:
        if 400 <= answer.status < 500 and method == "POST":
            # The token endpoint explains a refusal in a JSON body (RFC 6749 5.2).
            try:
                return answer.status, _json(answer, what)
            except IdpError:
                pass
        raise IdpError(f"The {what} answered HTTP {answer.status}.")
    return answer.status, _json(answer, what)


def _get_json_object(url: str, what: str, **kwargs) -> dict:
    _status, body = _request_json("GET", url, what, **kwargs)
    if not isinstance(body, dict):
        raise IdpError(f"The {what} is not a JSON object.")
    return body


def fetch_discovery(issuer: str) -> dict:
    """The IdP's discovery document, checked: it names this issuer, the endpoints a sign-in
    needs, the code flow and at least one safe signing algorithm."""
    url = issuer.rstrip("/") + DISCOVERY_PATH
    doc = _get_json_object(url, f"discovery document at {url}")
    stated = doc.get("issuer")
    if not isinstance(stated, str) or stated.rstrip("/") != issuer.rstrip("/"):
        raise IdpError(
            f"The discovery document names the issuer {str(stated)[:200]!r}, not {issuer!r}."
        )
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        _check_url(doc.get(key), key)
    for key in ("userinfo_endpoint", "end_session_endpoint"):
        if doc.get(key) is not None:
            _check_url(doc.get(key), key)
    response_types = doc.get("response_types_supported") or ["code"]
    if not isinstance(response_types, list) or "code" not in response_types:
        raise IdpError("The IdP does not offer the authorization code flow (response_type code).")
    advertised = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    if not isinstance(advertised, list):
        raise IdpError("id_token_signing_alg_values_supported is not a list.")
    algorithms = [a for a in SAFE_ALGORITHMS if a in advertised]
    if not algorithms:
        raise IdpError(
            f"The IdP signs ID tokens only with {', '.join(str(a)[:20] for a in advertised[:10])}; "
            f"Siphera accepts {', '.join(SAFE_ALGORITHMS)}."
        )
    doc["_algorithms"] = algorithms
    return doc


def _public_jwks(raw: Any) -> dict:
    """The signing keys of a JWKS, public halves only; IdpError when none is usable."""
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise IdpError('The JWKS is not {"keys": [...]}.')
    keys = []
    for entry in raw["keys"][:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # symmetric ("oct") keys never verify an ID token here
        try:
            key_set = KeySet.import_key_set({"keys": [entry]})
        except (JoseError, ValueError, TypeError):
            continue
        keys.extend(key_set.as_dict(private=False)["keys"])
    if not keys:
        raise IdpError("The JWKS holds no usable signing key (RSA, EC or OKP).")
    return {"keys": keys}


def fetch_jwks(jwks_uri: str) -> dict:
    return _public_jwks(_get_json_object(jwks_uri, f"JWKS at {jwks_uri}"))


# --- set-up ------------------------------------------------------------------------------------


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_sso_config", message)


def _string_list(raw: dict, key: str, default: tuple[str, ...]) -> list[str]:
    value = raw.get(key, list(default))
    if (
        not isinstance(value, list)
        or len(value) > 50
        or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
    ):
        raise _invalid(f"{key} is a list of strings.")
    return [v.strip() for v in value if v.strip()]


def check_config(
    raw: dict, secret: str | None, *, existing: IdentityProvider | None
) -> tuple[dict, str | None]:
    """Validate an admin's OIDC settings, fetch the IdP's discovery document and keys, and
    return (config to store, client secret to store: "" to clear, None to keep).

    `config`: `issuer` (URL; discovery must name the same issuer), `client_id`,
    `scopes` (default openid profile email; `openid` is always sent), `public_client`
    (no secret, PKCE only), `use_userinfo` (ask the userinfo endpoint for mapped claims
    the ID token lacks; default true), `mfa_amr_values` (the `amr` values that count as
    multi-factor; default mfa, mca, otp, hwk, sc, sms, tel), `mfa_acr_values` (`acr`
    values that do). 400 `invalid_sso_config` with an actionable message otherwise.
    """
    if not isinstance(raw, dict):
        raise _invalid("config is an object.")
    unknown = sorted(set(raw) - _INPUT_KEYS - _DERIVED_KEYS)
    if unknown:
        raise _invalid(f"Unknown OIDC settings: {', '.join(unknown)}.")
    try:
        issuer = _check_url(raw.get("issuer"), "issuer")
    except IdpError as exc:
        raise _invalid(str(exc)) from None
    if urlsplit(issuer).query:
        raise _invalid("The issuer is a URL without a ?query (OpenID Connect Discovery 1.0).")
    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not 0 < len(client_id.strip()) <= 255:
        raise _invalid("client_id is the client id the IdP gave Siphera (1-255 characters).")
    client_id = client_id.strip()
    scopes = _string_list(raw, "scopes", DEFAULT_SCOPES)
    if not all(set(s) <= _SCOPE_CHARS for s in scopes):
        raise _invalid("A scope is letters, digits and - _ . : / only.")
    scopes = ["openid", *[s for s in scopes if s != "openid"]]
    flags = {}
    for key, default in (("public_client", False), ("use_userinfo", True)):
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            raise _invalid(f"{key} is true or false.")
    mfa_amr = _string_list(raw, "mfa_amr_values", DEFAULT_MFA_AMR)
    mfa_acr = _string_list(raw, "mfa_acr_values", ())

    if flags["public_client"]:
        if secret:
            raise _invalid("A public client has no client secret: drop secret or public_client.")
        new_secret: str | None = ""
    elif secret:
        if not isinstance(secret, str) or len(secret) > 1000:
            raise _invalid("secret is the client secret (at most 1000 characters).")
        new_secret = secret
    elif existing is not None and existing.kind == "oidc" and existing.secret_encrypted:
        new_secret = None
    else:
        raise _invalid(
            "Send the client secret as secret, or set public_client: true for a client "
            "without one (PKCE only)."
        )

    try:
        doc = fetch_discovery(issuer)
        jwks = fetch_jwks(doc["jwks_uri"])
    except IdpError as exc:
        raise _invalid(str(exc)) from None
    if flags["public_client"]:
        client_auth = "none"
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise _invalid("The IdP does not support PKCE S256, which a public client needs.")
    else:
        supported = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if not isinstance(supported, list):
            raise _invalid("The IdP's token_endpoint_auth_methods_supported is not a list.")
        choices = [m for m in CLIENT_AUTH_METHODS if m in supported]
        if not choices:
            offered = ", ".join(str(m)[:40] for m in supported[:10])
            raise _invalid(
                "The IdP's token endpoint accepts none of client_secret_basic, "
                f"client_secret_post (it offers {offered})."
            )
        client_auth = choices[0]
    config = {
        "issuer": doc["issuer"],
        "client_id": client_id,
        "scopes": scopes,
        **flags,
        "mfa_amr_values": mfa_amr,
        "mfa_acr_values": mfa_acr,
        "client_auth": client_auth,
        "signing_algorithms": doc["_algorithms"],
        **{key: doc.get(key) or "" for key in _ENDPOINTS},
        "jwks": jwks,
        "jwks_fetched_at": timezone.now().isoformat(),
    }
    return config, new_secret


def public_config(idp: IdentityProvider) -> dict:
    """The settings as GET /api/v1/org/sso shows them: never the secret; the keys only by id."""
    config = idp.config or {}
    shown = {key: config.get(key) for key in sorted(_INPUT_KEYS | _DERIVED_KEYS) if key in config}
    shown["key_ids"] = [k.get("kid", "") for k in (config.get("jwks") or {}).get("keys", [])]
    shown["redirect_path"] = reverse("sso-oidc-callback")
    return shown


# --- sign-in -----------------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def redirect_uri(request) -> str:
    """The callback URL on the org host this sign-in runs on (register it at the IdP). The
    host passed the tenant middleware: it is one of this org's domains."""
    return request.build_absolute_uri(reverse("sso-oidc-callback"))


def begin(
    request, idp: IdentityProvider, *, purpose: str, return_to: str = "", code_challenge: str = ""
) -> str:
    """Remember the sign-in (state = the SsoRequest id, nonce, PKCE verifier) and return the
    IdP's authorization URL to send the browser to."""
    config = idp.config
    verifier = secrets.token_urlsafe(64)
    row = flow.do_start_request(
        kind=IdentityProvider.OIDC,
        purpose=purpose,
        return_to=return_to,
        code_challenge=code_challenge,
        nonce=secrets.token_urlsafe(32),
        code_verifier=verifier,
    )
    _bind_to_browser(request, row.id)
    params = {
        "response_type": "code",
        "client_id": config["client_id"],
        "redirect_uri": redirect_uri(request),
        "scope": " ".join(config.get("scopes") or DEFAULT_SCOPES),
        "state": row.id,
        "nonce": row.nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    if purpose == SsoRequest.TEST:
        params["prompt"] = "login"  # an owner testing wants to see the IdP's sign-in
    endpoint = config["authorization_endpoint"]
    return endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(params)


# The browser that started a sign-in keeps (in its session) a hash of the sign-in's state;
# the answer must come back to that browser. Otherwise an attacker could start a sign-in
# as themselves and have a victim's browser finish it (login CSRF): the victim would be
# signed in to the attacker's account. The IdP's answer is a top-level GET, so the
# session cookie (SameSite=Lax) comes with it.
_BROWSER_STATES = "oidc_states"
_BROWSER_STATES_KEPT = 5


def _state_tag(state: str) -> str:
    return hashlib.sha256(f"oidc-state:{state}".encode()).hexdigest()[:32]


def _bind_to_browser(request, state: str) -> None:
    kept = [t for t in request.session.get(_BROWSER_STATES, []) if isinstance(t, str)]
    request.session[_BROWSER_STATES] = [*kept, _state_tag(state)][-_BROWSER_STATES_KEPT:]


def check_same_browser(request, state: str) -> None:
    """403 `sso_wrong_browser` unless this browser started the sign-in named by `state`;
    the state is forgotten by the browser either way."""
    kept = request.session.get(_BROWSER_STATES, [])
    tag = _state_tag(state)
    if isinstance(kept, list) and tag in kept:
        request.session[_BROWSER_STATES] = [t for t in kept if t != tag]
        return
    raise ApiError(
        403,
        "sso_wrong_browser",
        "This sign-in was started in another browser (or its cookies were cleared); "
        "start it again here.",
    )


def _idp_error(message: str) -> ApiError:
    return ApiError(502, "sso_idp_error", f"The identity provider could not be used: {message}")


def _client_secret(idp: IdentityProvider) -> str:
    if not idp.secret_encrypted:
        return ""
    try:
        return crypto.decrypt(idp.secret_encrypted).decode()
    except crypto.DecryptionError:
        # SECRET_KEYS lost the key that sealed it: the owner must enter the secret again.
        raise ApiError(
            503,
            "sso_secret_unreadable",
            "Single sign-on is misconfigured (the client secret cannot be read); "
            "an owner must enter it again.",
        ) from None


def exchange_code(idp: IdentityProvider, code: str, verifier: str, callback: str) -> dict:
    """The token endpoint's answer for `code` (must hold an id_token)."""
    config = idp.config
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": callback,
        "code_verifier": verifier,
    }
    auth = None
    if config.get("client_auth") == "client_secret_basic":
        auth = httpx.BasicAuth(config["client_id"], _client_secret(idp))
    elif config.get("client_auth") == "client_secret_post":
        data.update(client_id=config["client_id"], client_secret=_client_secret(idp))
    else:
        data["client_id"] = config["client_id"]
    try:
        status, body = _request_json(
            "POST",
            config["token_endpoint"],
            "token endpoint",
            data=data,
            auth=auth,
            headers={"Accept": "application/json"},
        )
    except IdpError as exc:
        raise _idp_error(str(exc)) from None
    if status != 200 or not isinstance(body, dict):
        error = body.get("error", "") if isinstance(body, dict) else ""
        raise ApiError(
            403,
            "sso_token_refused",
            f"The identity provider refused the sign-in code ({str(error)[:100] or status}).",
        )
    if not isinstance(body.get("id_token"), str):
        raise ApiError(403, "sso_invalid_token", "The identity provider sent no ID token.")
    return body


def _refetch_jwks(idp: IdentityProvider) -> dict | None:
    """Fetch the IdP's keys again (a key it rolled over to), at most once per
    OIDC_JWKS_MIN_REFETCH_SECONDS per org; None when not allowed yet. Stored on the IdP
    row and audited `sso.keys_refreshed` when the key ids changed."""
    window = settings.OIDC_JWKS_MIN_REFETCH_SECONDS
    if window > 0 and ratelimit.hit("oidc-jwks", "refetch", limit=1, window=window) is not None:
        return None
    try:
        jwks = fetch_jwks(idp.config["jwks_uri"])
    except IdpError as exc:
        raise _idp_error(str(exc)) from None
    with transaction.atomic():
        row = IdentityProvider.objects.select_for_update().filter(pk=1).first()
        if row is None or row.config.get("jwks_uri") != idp.config["jwks_uri"]:
            return jwks  # the settings changed meanwhile: use the keys, store nothing
        before = [k.get("kid", "") for k in row.config.get("jwks", {}).get("keys", [])]
        after = [k.get("kid", "") for k in jwks["keys"]]
        row.config = {
            **row.config,
            "jwks": jwks,
            "jwks_fetched_at": timezone.now().isoformat(),
        }
        row.metadata_refreshed_at = timezone.now()
        row.save(update_fields=["config", "metadata_refreshed_at"])
        if before != after:
            audit.record(
                AuditEvent.SSO_KEYS_REFRESHED,
                actor=audit.Actor.system("oidc"),
                target_type="identity_provider",
                target_id=IdentityProvider.OIDC,
                data={"before": before, "after": after},
            )
    idp.config = row.config
    return jwks


def _keys_are_stale(config: dict) -> bool:
    fetched = parse_datetime(str(config.get("jwks_fetched_at") or ""))
    if fetched is None:
        return True
    return (timezone.now() - fetched).total_seconds() > settings.OIDC_JWKS_MAX_AGE_SECONDS


def _refuse(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)


def _signing_keys(keys: dict, kid: str | None, alg: str) -> list:
    """The keys of `keys` that could have signed a token with this kid and alg."""
    found = []
    for entry in keys.get("keys", []):
        if kid is not None and entry.get("kid") != kid:
            continue
        if entry.get("alg") not in (None, alg):
            continue
        try:
            found.append(KeySet.import_key_set({"keys": [entry]}).keys[0])
        except (JoseError, ValueError, TypeError):
            continue
    return found


def verify_id_token(idp: IdentityProvider, id_token: str, *, nonce: str) -> dict:
    """The ID token's claims once its signature, issuer, audience, lifetime and nonce all
    check out; otherwise a 403 naming the failed check."""
    config = idp.config
    if not isinstance(id_token, str) or len(id_token) > MAX_ID_TOKEN_CHARS:
        raise _refuse("sso_invalid_token", "The ID token is missing or too large.")
    try:
        header = jws.extract_compact(id_token.encode()).protected
    except (JoseError, ValueError, TypeError):
        raise _refuse("sso_invalid_token", "The ID token is not a signed JWT.") from None
    alg = header.get("alg")
    if alg not in (config.get("signing_algorithms") or []):
        raise _refuse(
            "sso_invalid_signature",
            f"The ID token is signed with {str(alg)[:20]!r}, which this IdP does not advertise "
            "or Siphera does not accept.",
        )
    kid = header.get("kid")
    kid = kid if isinstance(kid, str) else None
    jwks = config.get("jwks") or {}
    if _keys_are_stale(config):
        # Keys the IdP has since withdrawn must stop verifying even if it never signs
        # with a new kid: past their max age the keys are fetched again (same limit).
        try:
            jwks = _refetch_jwks(idp) or jwks
        except ApiError:
            pass  # the IdP's JWKS is unreachable just now: the cached keys still count
    keys = _signing_keys(jwks, kid, alg)
    if not keys and kid is not None:
        fresh = _refetch_jwks(idp)
        keys = _signing_keys(fresh, kid, alg) if fresh is not None else []
    if not keys:
        raise _refuse(
            "sso_unknown_key",
            "The ID token is signed with a key the identity provider does not publish.",
        )
    claims = None
    for key in keys:
        try:
            claims = jwt.decode(id_token, key, algorithms=[alg]).claims
            break
        except (JoseError, ValueError, TypeError):
            continue
    if claims is None:
        raise _refuse("sso_invalid_signature", "The ID token's signature does not verify.")
    _check_claims(config, claims, nonce)
    return claims


def _check_claims(config: dict, claims: dict, nonce: str) -> None:
    if claims.get("iss") != config["issuer"]:
        raise _refuse("sso_wrong_issuer", "The ID token was issued by another issuer.")
    client_id = config["client_id"]
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise _refuse("sso_wrong_audience", "The ID token is meant for another application.")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise _refuse("sso_wrong_audience", "The ID token was issued to another application.")
    now = time.time()
    skew = settings.OIDC_CLOCK_SKEW_SECONDS
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise _refuse("sso_invalid_token", "The ID token has no exp or iat.")
    if exp <= now - skew:
        raise _refuse("sso_token_expired", "The ID token has expired; sign in again.")
    if iat > now + skew:
        raise _refuse("sso_invalid_token", "The ID token was issued in the future (check clocks).")
    got = claims.get("nonce")
    if not isinstance(got, str) or not nonce or not hmac.compare_digest(got, nonce):
        raise _refuse("sso_wrong_nonce", "The ID token does not belong to this sign-in (nonce).")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _refuse("sso_invalid_token", "The ID token has no subject.")


def _flatten(claims: dict, prefix: str = "", depth: int = 0) -> dict[str, list[str]]:
    """Claims as lists of strings; nested objects (Keycloak's realm_access.roles) under
    dotted names."""
    out: dict[str, list[str]] = {}
    for name, value in list(claims.items())[:200]:
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if depth < 2:
                out.update(_flatten(value, key + ".", depth + 1))
        elif isinstance(value, list):
            out[key] = [str(v) for v in value[:500] if isinstance(v, str | int | float | bool)]
        elif value is not None:
            out[key] = [str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def _wanted_claims(idp: IdentityProvider) -> set[str]:
    names = {v for v in (idp.attribute_map or {}).values() if v}
    if idp.subject_attribute:
        names.add(idp.subject_attribute)
    return names


def fetch_userinfo(idp: IdentityProvider, access_token: str, subject: str) -> dict:
    """The userinfo endpoint's claims (its `sub` must be the ID token's)."""
    try:
        body = _get_json_object(
            idp.config["userinfo_endpoint"],
            "userinfo endpoint",
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
    except IdpError as exc:
        raise _idp_error(str(exc)) from None
    if body.get("sub") != subject:
        raise _refuse("sso_invalid_token", "The userinfo answer is about another person.")
    return body


def assertion_from(idp: IdentityProvider, claims: dict) -> Assertion:
    attributes = _flatten(claims)
    subject = claims["sub"]
    if idp.subject_attribute:
        values = attributes.get(idp.subject_attribute) or []
        subject = values[0] if values else ""
    config = idp.config
    amr = claims.get("amr") if isinstance(claims.get("amr"), list) else []
    mfa_amr = set(config.get("mfa_amr_values") or DEFAULT_MFA_AMR)
    mfa = bool(mfa_amr & {str(v) for v in amr}) or (
        str(claims.get("acr", "")) in set(config.get("mfa_acr_values") or ())
    )
    return Assertion(subject=subject, attributes=attributes, mfa=mfa)


def complete(request, *, state: str, code: str) -> tuple[SsoRequest, Assertion, str]:
    """Finish the IdP's answer to a sign-in: the request it names (used up), the code
    exchanged, the ID token verified, missing mapped claims from userinfo. Returns the
    request, the assertion and the ID token (the hint for a later RP-initiated logout)."""
    sso_request = flow.check_take_request(state, kind=IdentityProvider.OIDC)
    check_same_browser(request, state)
    idp = IdentityProvider.objects.filter(pk=1, kind=IdentityProvider.OIDC).first()
    if idp is None:
        raise ApiError(404, "sso_not_configured", "OpenID Connect sign-in is not set up.")
    if not isinstance(code, str) or not 0 < len(code) <= 2000:
        raise _refuse("sso_invalid_response", "The identity provider sent no sign-in code.")
    token = exchange_code(idp, code, sso_request.code_verifier, redirect_uri(request))
    claims = verify_id_token(idp, token["id_token"], nonce=sso_request.nonce)
    missing = _wanted_claims(idp) - set(_flatten(claims))
    access_token = token.get("access_token")
    if (
        missing
        and idp.config.get("use_userinfo", True)
        and idp.config.get("userinfo_endpoint")
        and isinstance(access_token, str)
    ):
        extra = fetch_userinfo(idp, access_token, claims["sub"])
        claims = {**extra, **claims}  # the signed ID token wins where both speak
    return sso_request, assertion_from(idp, claims), token["id_token"]


def logout_url(
    request, idp: IdentityProvider, *, id_token_hint: str = "", next_url: str = ""
) -> str | None:
    """RP-initiated logout at the IdP (OpenID Connect RP-Initiated Logout 1.0) where its
    discovery names an end_session_endpoint; None otherwise. `id_token_hint` is the ID
    token of the sign-in (some IdPs, Okta among them, require it). The IdP sends the
    browser back to `next_url` (absolute on this host; default the portal's sign-in page)
    if that URL is registered with it."""
    endpoint = (idp.config or {}).get("end_session_endpoint")
    if idp.kind != IdentityProvider.OIDC or not endpoint or not idp.config.get("client_id"):
        return None
    back = request.build_absolute_uri(next_url or reverse("portal:login"))
    params = {"client_id": idp.config["client_id"], "post_logout_redirect_uri": back}
    if id_token_hint:
        params["id_token_hint"] = id_token_hint
    return endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(params)
