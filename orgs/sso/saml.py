"""SAML 2.0 single sign-on of one org, with python3-saml (OneLogin's toolkit).

Each org is its own service provider (SP): its entity id is the org's metadata URL
`https://<org host>/sso/saml/metadata`, its ACS `/sso/saml/acs` (HTTP-POST) and its single
logout service `/sso/saml/sls` (HTTP-Redirect), all on the host the request came in on,
which the tenant middleware matched to this org's registered domains (PITFALLS 12: never a
host from a forwarded header). The python3-saml settings are built per request from the
org's `IdentityProvider` row:

- `config` keeps the IdP's entity id, SSO/SLO URLs and signing certificates (several, for
  rollover), the metadata URL they were read from, and the SP's own certificate;
- `secret_encrypted` keeps the SP's private key (generated on first configuration; it
  signs AuthnRequests and LogoutRequests/Responses and decrypts encrypted assertions).

A response is accepted only when it is signed (the response, the assertion or both) by one
of the IdP's certificates, is for this SP (audience, destination, recipient), is within its
validity (with SAML_CLOCK_SKEW_SECONDS of tolerance), answers a sign-in this org started
and has not answered yet (`SsoRequest`) — or is IdP-initiated where the org opted in — and
carries an assertion id never accepted before (`UsedAssertion`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.sso import flow
from orgs.sso.models import IdentityProvider, SsoRequest
from orgs.sso.provisioning import Assertion
from siphera import crypto, outbound
from siphera.api_errors import ApiError

log = logging.getLogger("siphera.sso.saml")

METADATA_PATH = "/sso/saml/metadata"
ACS_PATH = "/sso/saml/acs"
SLS_PATH = "/sso/saml/sls"

# What an admin may send in `config` (PUT /api/v1/org/sso).
INPUT_KEYS = {
    "metadata_url",
    "metadata_xml",
    "idp_entity_id",
    "sso_url",
    "slo_url",
    "idp_certs",
    "name_id_format",
    "require_encrypted_assertions",
    "sign_requests",
    "mfa_contexts",
    "mfa_attribute",
    "sp_cert",
}
# Shown by GET and harmless to send back unchanged (a GET-edit-PUT round trip).
READ_ONLY_KEYS = {"previous_idp_certs", "previous_certs_until", "sp_cert_not_after"}
NAME_ID_FORMATS = (
    Constants.NAMEID_UNSPECIFIED,
    Constants.NAMEID_PERSISTENT,
    Constants.NAMEID_EMAIL_ADDRESS,
    Constants.NAMEID_TRANSIENT,
    Constants.NAMEID_WINDOWS_DOMAIN_QUALIFIED_NAME,
    Constants.NAMEID_X509_SUBJECT_NAME,
    Constants.NAMEID_KERBEROS,
    Constants.NAMEID_ENTITY,
    "urn:oasis:names:tc:SAML:2.0:nameid-format:unspecified",
)
# AuthnContextClassRef values (and values of the MFA attribute) that say the IdP did
# multi-factor authentication; an org may set its own list (`mfa_contexts`).
DEFAULT_MFA_CONTEXTS = (
    "http://schemas.microsoft.com/claims/multipleauthn",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
    "https://refeds.org/profile/mfa",
)
# Entra ID / AD FS list the methods used in this attribute rather than in the context.
DEFAULT_MFA_ATTRIBUTE = "http://schemas.microsoft.com/claims/authnmethodsreferences"
MAX_METADATA_BYTES = 1024 * 1024
MAX_RESPONSE_CHARS = 1024 * 1024  # base64 of a SAMLResponse: a real one is a few KiB
MAX_CERTS = 10
SP_CERT_YEARS = 10
# After metadata stops listing a certificate, responses signed with it are still accepted
# this long (an IdP that switched keys before we refreshed, or a response in flight).
CERT_GRACE = timedelta(days=1)
# A response whose signature fails makes us re-read the metadata URL (key rollover) at
# most once per this many seconds per org.
REFETCH_MIN_INTERVAL = timedelta(seconds=60)


class MetadataError(Exception):
    """The IdP metadata could not be fetched or read (message safe to show an admin)."""


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_sso_config", message)


# --- where the SP lives -----------------------------------------------------------------------


def sp_base(request) -> str:
    """`scheme://host` of this org's SP. The host is the one the request came in on, which
    the tenant middleware matched to one of this org's domains (an unknown host never gets
    here); the scheme is what the server itself saw (`request.is_secure()`, which trusts
    a forwarded header only where SECURE_PROXY_SSL_HEADER says so)."""
    scheme = "https" if request.is_secure() else "http"
    return f"{scheme}://{request.get_host()}"


def sp_urls(request) -> dict[str, str]:
    base = sp_base(request)
    return {"entity_id": base + METADATA_PATH, "acs": base + ACS_PATH, "sls": base + SLS_PATH}


def _request_data(request) -> dict[str, Any]:
    return {
        "https": "on" if request.is_secure() else "off",
        "http_host": request.get_host(),
        "script_name": request.path,
        "get_data": request.GET.dict(),
        "post_data": request.POST.dict() if request.method == "POST" else {},
        "query_string": request.META.get("QUERY_STRING", ""),
    }


# --- certificates and keys --------------------------------------------------------------------


def _cert_body(raw: Any) -> str:
    """A certificate (PEM, or its base64 body) as its base64 DER body, or MetadataError."""
    if not isinstance(raw, str) or len(raw) > 20000:
        raise MetadataError("A certificate is a PEM or base64 string.")
    body = "".join(
        line.strip() for line in raw.strip().splitlines() if not line.strip().startswith("-----")
    )
    body = "".join(body.split())
    try:
        der = base64.b64decode(body, validate=True)
        x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise MetadataError("A certificate of the IdP is not a valid X.509 certificate.") from None
    return base64.b64encode(der).decode()


def _cert_info(body: str) -> dict[str, str]:
    cert = x509.load_der_x509_certificate(base64.b64decode(body))
    return {
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        "subject": cert.subject.rfc4514_string()[:200],
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _pem(body: str) -> str:
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _new_sp_key_pair() -> tuple[str, str]:
    """(certificate body, private key PEM): the SP's own RSA key and a self-signed
    certificate for it (IdPs pin the certificate; nobody checks a CA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Siphera SAML service provider")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * SP_CERT_YEARS))
        .sign(key, hashes.SHA256())
    )
    body = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return body, pem


def _check_own_key_pair(cert_raw: Any, key_pem: str) -> str:
    """An admin's own SP certificate + private key: they must belong together."""
    try:
        body = _cert_body(cert_raw)
    except MetadataError:
        raise _invalid("sp_cert is not a valid X.509 certificate.") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise _invalid("secret is not an unencrypted PEM private key.") from None
    cert = x509.load_der_x509_certificate(base64.b64decode(body))
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key().public_numbers() != (
        cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise _invalid("secret is not the RSA private key of sp_cert.")
    return body


# --- IdP metadata -----------------------------------------------------------------------------


def _check_url(value: Any, what: str) -> str:
    try:
        return outbound.check_url(value, what, allow_http=settings.SAML_ALLOW_HTTP)
    except outbound.OutboundError as exc:
        raise MetadataError(str(exc)) from None


def fetch_metadata(url: str) -> str:
    """The IdP's metadata XML from `url` (siphera.outbound: public addresses only unless
    the operator allows the network, timeout SAML_HTTP_TIMEOUT_SECONDS, at most 1 MiB, no
    redirects followed), or MetadataError."""
    try:
        answer = outbound.request(
            "GET",
            url,
            what="The metadata URL",
            timeout=settings.SAML_HTTP_TIMEOUT_SECONDS,
            max_bytes=MAX_METADATA_BYTES,
            allow_http=settings.SAML_ALLOW_HTTP,
            headers={"Accept": "application/samlmetadata+xml"},
        )
    except outbound.OutboundError as exc:
        raise MetadataError(str(exc)) from None
    if answer.status != 200:
        raise MetadataError(f"The metadata URL answered HTTP {answer.status}.")
    try:
        return answer.body.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError("The metadata is not UTF-8 XML.") from None


def parse_metadata(xml: str, entity_id: str | None = None) -> dict[str, Any]:
    """The IdP's entity id, SSO and SLO URLs (HTTP-Redirect) and signing certificates from
    its metadata XML (the first IdP in an aggregate, or the one named `entity_id`)."""
    if len(xml.encode()) > MAX_METADATA_BYTES:
        raise MetadataError(f"The metadata is larger than {MAX_METADATA_BYTES // 1024} KiB.")
    try:
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(xml, entity_id=entity_id or None)
    except Exception as exc:  # lxml, defusedxml and the parser raise many kinds
        log.info("unreadable IdP metadata: %s", exc)
        raise MetadataError("The metadata is not valid SAML metadata XML.") from None
    idp = parsed.get("idp") or {}
    if not idp.get("entityId"):
        raise MetadataError("The metadata names no identity provider (IDPSSODescriptor).")
    sso = (idp.get("singleSignOnService") or {}).get("url")
    if not sso:
        raise MetadataError(
            "The metadata has no SingleSignOnService with the HTTP-Redirect binding."
        )
    multi = idp.get("x509certMulti") or {}
    raw_certs = list(multi.get("signing") or [])
    if not raw_certs and idp.get("x509cert"):
        raw_certs = [idp["x509cert"]]
    if not raw_certs:
        raise MetadataError("The metadata has no signing certificate for the IdP.")
    certs: list[str] = []
    for raw in raw_certs[:MAX_CERTS]:
        body = _cert_body(raw)
        if body not in certs:
            certs.append(body)
    return {
        "idp_entity_id": idp["entityId"],
        "sso_url": _check_url(sso, "The IdP's SingleSignOnService"),
        "slo_url": _check_url(slo, "The IdP's SingleLogoutService")
        if (slo := (idp.get("singleLogoutService") or {}).get("url"))
        else "",
        "idp_certs": certs,
        "name_id_format": (parsed.get("sp") or {}).get("NameIDFormat") or "",
    }


# --- check_config / public_config -------------------------------------------------------------


def _bool(raw: dict, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(f"{key} is true or false.")
    return value


def _string_list(raw: dict, key: str, default: tuple[str, ...]) -> list[str]:
    value = raw.get(key, list(default))
    if (
        not isinstance(value, list)
        or len(value) > 50
        or not all(isinstance(v, str) and 0 < len(v.strip()) <= 300 for v in value)
    ):
        raise _invalid(f"{key} is a list of at most 50 strings.")
    return [v.strip() for v in value]


def check_config(
    raw: dict, secret: str | None, *, existing: IdentityProvider | None
) -> tuple[dict, str | None]:
    """Validate a SAML set-up: IdP metadata (`metadata_xml` uploaded or `metadata_url`
    fetched), or the IdP's `idp_entity_id` + `sso_url` (+ `slo_url`) + `idp_certs` typed
    in; the options. Returns (config to store, SP private key to store or None to keep the
    stored one). The SP's key pair is made on first configuration (or taken from `secret`
    + `sp_cert` when an admin brings their own). 400 `invalid_sso_config` on anything bad."""
    unknown = sorted(set(raw) - INPUT_KEYS - READ_ONLY_KEYS)
    if unknown:
        raise _invalid(f"Unknown SAML settings: {', '.join(unknown)}.")
    manual = {k for k in ("sso_url", "slo_url", "idp_certs") if raw.get(k)}
    sources = [k for k in ("metadata_url", "metadata_xml") if raw.get(k)]
    if len(sources) > 1:
        raise _invalid("Give metadata_url or metadata_xml, not both.")
    if sources and manual:
        raise _invalid(
            "Give the IdP's metadata (metadata_url or metadata_xml) or its settings "
            "(sso_url, slo_url, idp_certs), not both."
        )
    entity_id = raw.get("idp_entity_id") or ""
    if not isinstance(entity_id, str) or len(entity_id) > 1000:
        raise _invalid("idp_entity_id is the IdP's entity id (at most 1000 characters).")
    config: dict[str, Any] = {}
    try:
        if "metadata_url" in sources:
            url = _check_url(raw["metadata_url"], "metadata_url")
            config.update(parse_metadata(fetch_metadata(url), entity_id.strip() or None))
            config["metadata_url"] = url
        elif "metadata_xml" in sources:
            xml = raw["metadata_xml"]
            if not isinstance(xml, str):
                raise MetadataError("metadata_xml is the IdP's metadata document as a string.")
            config.update(parse_metadata(xml, entity_id.strip() or None))
        else:
            if not entity_id.strip() or not raw.get("sso_url") or not raw.get("idp_certs"):
                raise MetadataError(
                    "Give the IdP's metadata (metadata_url or metadata_xml), or its "
                    "idp_entity_id, sso_url and idp_certs."
                )
            certs = raw["idp_certs"]
            certs = [certs] if isinstance(certs, str) else certs
            if not isinstance(certs, list) or not 1 <= len(certs) <= MAX_CERTS:
                raise MetadataError(f"idp_certs is a list of 1-{MAX_CERTS} certificates.")
            config["idp_entity_id"] = entity_id.strip()
            config["sso_url"] = _check_url(raw["sso_url"], "sso_url")
            config["slo_url"] = _check_url(raw["slo_url"], "slo_url") if raw.get("slo_url") else ""
            config["idp_certs"] = list(dict.fromkeys(_cert_body(c) for c in certs))
            config["name_id_format"] = ""
    except MetadataError as exc:
        raise _invalid(str(exc)) from None

    name_id_format = raw.get("name_id_format") or config.get("name_id_format") or ""
    if name_id_format not in ("", *NAME_ID_FORMATS):
        raise _invalid(f"name_id_format is one of: {', '.join(NAME_ID_FORMATS)}.")
    config["name_id_format"] = name_id_format or Constants.NAMEID_UNSPECIFIED
    config["require_encrypted_assertions"] = _bool(raw, "require_encrypted_assertions", False)
    config["sign_requests"] = _bool(raw, "sign_requests", True)
    config["mfa_contexts"] = _string_list(raw, "mfa_contexts", DEFAULT_MFA_CONTEXTS)
    mfa_attribute = raw.get("mfa_attribute", DEFAULT_MFA_ATTRIBUTE)
    if not isinstance(mfa_attribute, str) or len(mfa_attribute) > 300:
        raise _invalid("mfa_attribute is an attribute name (or empty).")
    config["mfa_attribute"] = mfa_attribute.strip()

    # The SP's own key pair: kept across changes, made the first time, or the admin's own.
    before = existing.config if existing is not None and existing.kind == "saml" else {}
    new_secret: str | None = None
    if secret:
        config["sp_cert"] = _check_own_key_pair(raw.get("sp_cert"), secret)
        new_secret = secret
    elif before.get("sp_cert") and existing is not None and existing.secret_encrypted:
        if raw.get("sp_cert") and _cert_body_or_none(raw["sp_cert"]) != before["sp_cert"]:
            raise _invalid("A new sp_cert needs its private key in secret.")
        config["sp_cert"] = before["sp_cert"]
    else:
        config["sp_cert"], new_secret = _new_sp_key_pair()
    config["sp_cert_not_after"] = _cert_info(config["sp_cert"])["not_after"]
    # What the admin gives is trusted exactly: a certificate they remove (compromised,
    # say) stops verifying now. Only the automatic refresh keeps dropped ones a while.
    return config, new_secret


def _cert_body_or_none(raw: Any) -> str | None:
    try:
        return _cert_body(raw)
    except MetadataError:
        return None


def _carry_previous_certs(config: dict, before: dict, now: datetime | None = None) -> None:
    """Keep, for CERT_GRACE, the certificates `before` trusted that `config` drops."""
    now = now or timezone.now()
    previous = list(before.get("previous_idp_certs") or [])
    until = before.get("previous_certs_until")
    if not until or datetime.fromisoformat(until) <= now:
        previous = []
    dropped = [c for c in before.get("idp_certs") or [] if c not in config["idp_certs"]]
    if dropped:
        previous = list(dict.fromkeys([*previous, *dropped]))
        until = (now + CERT_GRACE).isoformat()
    previous = [c for c in previous if c not in config["idp_certs"]][:MAX_CERTS]
    if previous:
        config["previous_idp_certs"] = previous
        config["previous_certs_until"] = until
    else:
        config.pop("previous_idp_certs", None)
        config.pop("previous_certs_until", None)


def trusted_certs(config: dict, now: datetime | None = None) -> list[str]:
    """The IdP signing certificates a response may be signed with right now."""
    certs = list(config.get("idp_certs") or [])
    until = config.get("previous_certs_until")
    if until and datetime.fromisoformat(until) > (now or timezone.now()):
        certs += [c for c in config.get("previous_idp_certs") or [] if c not in certs]
    return certs


def public_config(idp: IdentityProvider) -> dict:
    """The SAML settings as GET /api/v1/org/sso shows them (never the SP's private key)."""
    config = idp.config or {}
    shown = {
        key: config.get(key)
        for key in (
            "idp_entity_id",
            "sso_url",
            "slo_url",
            "metadata_url",
            "name_id_format",
            "require_encrypted_assertions",
            "sign_requests",
            "mfa_contexts",
            "mfa_attribute",
            "sp_cert",
            "sp_cert_not_after",
        )
        if key in config
    }
    shown["idp_certs"] = [_cert_info(c) for c in config.get("idp_certs") or []]
    if config.get("previous_idp_certs"):
        shown["previous_idp_certs"] = [_cert_info(c) for c in config["previous_idp_certs"]]
        shown["previous_certs_until"] = config.get("previous_certs_until")
    return shown


# --- python3-saml settings --------------------------------------------------------------------


def _settings_dict(request, idp: IdentityProvider | None, *, logout: bool = False) -> dict:
    urls = sp_urls(request)
    config = idp.config if idp is not None else {}
    sp: dict[str, Any] = {
        "entityId": urls["entity_id"],
        "assertionConsumerService": {"url": urls["acs"], "binding": Constants.BINDING_HTTP_POST},
        "singleLogoutService": {"url": urls["sls"], "binding": Constants.BINDING_HTTP_REDIRECT},
        "NameIDFormat": config.get("name_id_format") or Constants.NAMEID_UNSPECIFIED,
        "x509cert": config.get("sp_cert", ""),
        "privateKey": "",
    }
    if idp is not None and idp.secret_encrypted:
        key = crypto.decrypt(idp.secret_encrypted)
        sp["privateKey"] = key.decode() if isinstance(key, bytes) else key
    has_key = bool(sp["x509cert"] and sp["privateKey"])
    data: dict[str, Any] = {
        "strict": True,
        "debug": False,
        "sp": sp,
        "security": {
            "authnRequestsSigned": has_key and bool(config.get("sign_requests", True)),
            "logoutRequestSigned": has_key,
            "logoutResponseSigned": has_key,
            # A response must be signed, its assertion or itself (python3-saml refuses one
            # signed nowhere); logout messages must carry the IdP's signature.
            "wantMessagesSigned": logout,
            "wantAssertionsSigned": False,
            "wantAssertionsEncrypted": bool(config.get("require_encrypted_assertions")),
            "wantNameId": True,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "allowRepeatAttributeName": True,
            "rejectDeprecatedAlgorithm": True,
            "signatureAlgorithm": Constants.RSA_SHA256,
            "digestAlgorithm": Constants.SHA256,
        },
    }
    if idp is not None:
        idp_data: dict[str, Any] = {
            "entityId": config["idp_entity_id"],
            "singleSignOnService": {
                "url": config["sso_url"],
                "binding": Constants.BINDING_HTTP_REDIRECT,
            },
            "x509certMulti": {"signing": trusted_certs(config)},
        }
        if config.get("slo_url"):
            idp_data["singleLogoutService"] = {
                "url": config["slo_url"],
                "binding": Constants.BINDING_HTTP_REDIRECT,
            }
        data["idp"] = idp_data
    return data


def saml_settings(request, idp: IdentityProvider, *, logout: bool = False):
    return OneLogin_Saml2_Settings(
        _settings_dict(request, idp, logout=logout), sp_validation_only=False
    )


def sp_metadata(request, idp: IdentityProvider | None) -> str:
    """This org's SP metadata XML (with the SP's certificate once one was made)."""
    data = _settings_dict(request, idp if idp is not None and idp.kind == "saml" else None)
    if data["sp"]["x509cert"]:
        # Offer the key for encryption whether or not this org requires it (python3-saml
        # lists it only where encryption is required): an IdP may always encrypt.
        data["security"]["wantAssertionsEncrypted"] = True
        # Valid as long as its certificate (python3-saml's default is two days, after which
        # an IdP holding a saved copy may refuse it); cacheDuration still says re-read weekly.
        cert = x509.load_der_x509_certificate(base64.b64decode(data["sp"]["x509cert"]))
        data["security"]["metadataValidUntil"] = cert.not_valid_after_utc.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    settings_obj = OneLogin_Saml2_Settings(data, sp_validation_only=True)
    metadata = settings_obj.get_sp_metadata()
    return metadata.decode() if isinstance(metadata, bytes) else metadata


# --- sign-in ----------------------------------------------------------------------------------


def begin(
    request, idp: IdentityProvider, *, purpose: str, return_to: str = "", code_challenge: str = ""
) -> str:
    """The IdP URL (HTTP-Redirect binding, signed AuthnRequest) for a new sign-in, whose
    AuthnRequest ID keys the `SsoRequest` the response must answer."""
    auth = OneLogin_Saml2_Auth(_request_data(request), saml_settings(request, idp))
    url = auth.login(return_to="", force_authn=purpose == SsoRequest.TEST)
    request_id = auth.get_last_request_id()
    binding = ""
    if request.is_secure():
        # Bind the sign-in to this browser (against login CSRF: someone else's valid
        # response posted from a victim's browser). The IdP's cross-site POST carries only
        # a SameSite=None cookie, which browsers keep to https.
        secret = secrets.token_urlsafe(32)
        binding = hashlib.sha256(secret.encode()).hexdigest()
        cookies = getattr(request, "sso_cookies", [])
        cookies.append(
            {
                "key": binding_cookie_name(request_id),
                "value": secret,
                "max_age": settings.SSO_REQUEST_TTL_SECONDS,
                "path": ACS_PATH,
                "secure": True,
                "httponly": True,
                "samesite": "None",
            }
        )
        request.sso_cookies = cookies
    flow.do_start_request(
        kind=IdentityProvider.SAML,
        purpose=purpose,
        request_id=request_id,
        return_to=return_to,
        code_challenge=code_challenge,
        nonce=binding,
    )
    return url


def binding_cookie_name(request_id: str) -> str:
    """One cookie per sign-in, so two started in two tabs do not undo each other."""
    return "sph_saml_" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


def _check_browser(request, sso_request: SsoRequest) -> None:
    """A sign-in started over https must come back in the browser that started it."""
    if not sso_request.nonce:
        return
    secret = request.COOKIES.get(binding_cookie_name(sso_request.pk), "")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    if not secret or not hmac.compare_digest(digest, sso_request.nonce):
        raise _refuse(
            "sso_other_browser",
            "This sign-in was started in another browser (or its cookie was blocked); "
            "start it again here.",
        )


_VALIDATION_CODES = {
    OneLogin_Saml2_ValidationError.NO_SIGNATURE_FOUND: "sso_unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNED_MESSAGE: "sso_unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNED_ASSERTION: "sso_unsigned",
    OneLogin_Saml2_ValidationError.INVALID_SIGNATURE: "sso_bad_signature",
    OneLogin_Saml2_ValidationError.WRONG_AUDIENCE: "sso_wrong_audience",
    OneLogin_Saml2_ValidationError.WRONG_DESTINATION: "sso_wrong_destination",
    OneLogin_Saml2_ValidationError.EMPTY_DESTINATION: "sso_wrong_destination",
    OneLogin_Saml2_ValidationError.WRONG_ISSUER: "sso_wrong_issuer",
    OneLogin_Saml2_ValidationError.ASSERTION_EXPIRED: "sso_expired",
    OneLogin_Saml2_ValidationError.ASSERTION_TOO_EARLY: "sso_not_yet_valid",
    OneLogin_Saml2_ValidationError.SESSION_EXPIRED: "sso_expired",
    OneLogin_Saml2_ValidationError.WRONG_SUBJECTCONFIRMATION: "sso_expired_or_misdirected",
    OneLogin_Saml2_ValidationError.STATUS_CODE_IS_NOT_SUCCESS: "sso_idp_refused",
    OneLogin_Saml2_ValidationError.NO_ENCRYPTED_ASSERTION: "sso_not_encrypted",
    OneLogin_Saml2_ValidationError.WRONG_INRESPONSETO: "sso_request_unknown",
}
_SIGNATURE_CODES = {"sso_bad_signature"}


def _refuse(code: str, message: str, status: int = 403) -> ApiError:
    return ApiError(status, code, message)


def _validate(request, idp: IdentityProvider, saml_response: str) -> OneLogin_Saml2_Response:
    """The parsed response once python3-saml found it valid for this SP, or ApiError."""
    Constants.ALLOWED_CLOCK_DRIFT = settings.SAML_CLOCK_SKEW_SECONDS
    try:
        response = OneLogin_Saml2_Response(saml_settings(request, idp), saml_response)
    except Exception as exc:  # malformed base64/XML, undecryptable assertion
        log.info("unreadable SAML response: %s", exc)
        raise _refuse(
            "sso_invalid_response", "The identity provider's answer could not be read."
        ) from None
    in_response_to = response.document.get("InResponseTo") or None
    try:
        response.is_valid(_request_data(request), request_id=in_response_to, raise_exceptions=True)
    except OneLogin_Saml2_ValidationError as exc:
        code = _VALIDATION_CODES.get(exc.code, "sso_invalid_response")
        log.info("SAML response refused (%s): %s", code, exc)
        raise _refuse(code, f"The identity provider's answer was refused: {exc}") from None
    except Exception as exc:  # python3-saml raises plain errors on some malformed input
        log.info("SAML response refused: %s", exc)
        raise _refuse(
            "sso_invalid_response", "The identity provider's answer could not be checked."
        ) from None
    return response


def check_response(request, idp: IdentityProvider) -> tuple[SsoRequest | None, Assertion, dict]:
    """Check a SAMLResponse posted to the ACS: (the sign-in it answers, or None where it is
    IdP-initiated and the org allows that; the assertion; the NameID details single logout
    needs). Refusals are ApiError with an `sso_*` code (403, 400 for unknown requests)."""
    saml_response = request.POST.get("SAMLResponse", "")
    if not saml_response or len(saml_response) > MAX_RESPONSE_CHARS:
        raise _refuse("sso_invalid_response", "No SAML response was posted.", 400)
    try:
        response = _validate(request, idp, saml_response)
    except ApiError as exc:
        if exc.code not in _SIGNATURE_CODES or not _refetch_metadata(idp):
            raise
        response = _validate(request, idp, saml_response)  # the IdP may have rolled its key
    in_response_to = response.get_in_response_to()
    if not in_response_to and not idp.allow_idp_initiated:
        raise _refuse(
            "sso_idp_initiated_disabled",
            "Sign-ins started at the identity provider are not allowed for this org; "
            "start the sign-in here.",
        )
    try:
        assertion, name_id = _assertion(idp, response), _name_id_of(response)
    except ApiError:
        raise
    except Exception as exc:  # python3-saml raises on an absent or encrypted-but-odd NameID
        log.info("SAML assertion unreadable: %s", exc)
        raise _refuse("sso_no_subject", "The identity provider sent no usable user id.") from None
    not_on_or_after = response.get_assertion_not_on_or_after()
    flow.check_not_replayed(
        response.get_assertion_id() or "",
        datetime.fromtimestamp(not_on_or_after, UTC) if not_on_or_after else None,
    )
    sso_request = (
        flow.check_take_request(in_response_to, kind=IdentityProvider.SAML)
        if in_response_to
        else None
    )
    if sso_request is not None:
        _check_browser(request, sso_request)
    return sso_request, assertion, name_id


def _name_id_of(response: OneLogin_Saml2_Response) -> dict:
    return {
        "name_id": response.get_nameid() or "",
        "name_id_format": response.get_nameid_format() or "",
        "name_id_nq": response.get_nameid_nq() or "",
        "name_id_spnq": response.get_nameid_spnq() or "",
    }


def _assertion(idp: IdentityProvider, response: OneLogin_Saml2_Response) -> Assertion:
    attributes: dict[str, list[str]] = {
        name: [str(v) for v in values if v is not None]
        for name, values in (response.get_attributes() or {}).items()
    }
    # Friendly names too (e.g. "mail" beside urn:oid:0.9.2342.19200300.100.1.3), where
    # they do not shadow a real attribute name.
    for name, values in (response.get_friendlyname_attributes() or {}).items():
        attributes.setdefault(name, [str(v) for v in values if v is not None])
    config = idp.config or {}
    if idp.subject_attribute:
        values = attributes.get(idp.subject_attribute) or []
        subject = str(values[0]).strip() if values else ""
    else:
        if response.get_nameid_format() == Constants.NAMEID_TRANSIENT:
            raise _refuse(
                "sso_no_subject",
                "The identity provider sent a transient NameID, which changes at every "
                "sign-in; configure a persistent NameID or a subject attribute.",
            )
        subject = (response.get_nameid() or "").strip()
    contexts = set(response.get_authn_contexts() or [])
    if config.get("mfa_attribute"):
        contexts |= set(attributes.get(config["mfa_attribute"]) or [])
    mfa = bool(contexts & set(config.get("mfa_contexts", DEFAULT_MFA_CONTEXTS)))
    return Assertion(
        subject=subject,
        attributes=attributes,
        mfa=mfa,
        session_index=response.get_session_index() or "",
    )


# --- single logout ----------------------------------------------------------------------------


def logout_url(request, idp: IdentityProvider | None, sso: dict | None) -> str | None:
    """Where to send the browser after the portal ended an SSO session: the IdP's SLO URL
    with a signed LogoutRequest for that session (`sso`: what the ACS remembered in the
    session: name_id, name_id_format, session_index...). None when the session was not a
    SAML one or the IdP has no SLO service."""
    if idp is None or idp.kind != IdentityProvider.SAML or not sso or sso.get("kind") != "saml":
        return None
    if not (idp.config or {}).get("slo_url") or not sso.get("name_id"):
        return None
    auth = OneLogin_Saml2_Auth(_request_data(request), saml_settings(request, idp))
    return auth.logout(
        return_to="",
        name_id=sso["name_id"],
        session_index=sso.get("session_index") or None,
        nq=sso.get("name_id_nq") or None,
        name_id_format=sso.get("name_id_format") or None,
        spnq=sso.get("name_id_spnq") or None,
    )


def _logout_message(request, idp: IdentityProvider, name: str):
    """(the base64 message `name` of a logout request/response, python3-saml settings to
    check it with, the request data) after checking the IdP's signature: in the query for
    HTTP-Redirect (python3-saml checks it: the settings require it), inside the XML for
    HTTP-POST (checked here, then the settings need no query signature)."""
    post = request.method == "POST"
    raw = (request.POST if post else request.GET).get(name, "")
    if not raw or len(raw) > MAX_RESPONSE_CHARS:
        raise _refuse("sso_invalid_logout", "No SAML logout message was sent.", 400)
    Constants.ALLOWED_CLOCK_DRIFT = settings.SAML_CLOCK_SKEW_SECONDS
    data = _request_data(request)
    if not post:
        settings_obj = saml_settings(request, idp, logout=True)
        auth = OneLogin_Saml2_Auth(data, settings_obj)
        check = (
            auth.validate_request_signature
            if name == "SAMLRequest"
            else (auth.validate_response_signature)
        )
        if not check(data["get_data"]):
            raise _refuse("sso_bad_signature", "The logout message's signature is not valid.")
        return raw, settings_obj, data
    element = "LogoutRequest" if name == "SAMLRequest" else "LogoutResponse"
    try:
        xml = OneLogin_Saml2_Utils.decode_base64_and_inflate(raw, ignore_zip=True)
        signed = OneLogin_Saml2_Utils.validate_sign(
            xml,
            multicerts=[
                OneLogin_Saml2_Utils.format_cert(c) for c in trusted_certs(idp.config or {})
            ],
            xpath=f"/samlp:{element}/ds:Signature",
            raise_exceptions=True,
        )
    except Exception as exc:
        log.info("SAML logout message (POST) refused: %s", exc)
        signed = False
    if not signed:
        raise _refuse("sso_bad_signature", "The logout message's signature is not valid.")
    data["get_data"] = (
        {"RelayState": data["post_data"]["RelayState"]}
        if ("RelayState" in data["post_data"])
        else {}
    )
    return raw, saml_settings(request, idp), data


def check_logout_request(request, idp: IdentityProvider) -> tuple[dict, str]:
    """An IdP-initiated LogoutRequest (HTTP-Redirect or HTTP-POST, signed by the IdP):
    ({name_id, session_indexes}, the URL to answer with our signed LogoutResponse)."""
    raw, settings_obj, data = _logout_message(request, idp, "SAMLRequest")
    auth = OneLogin_Saml2_Auth(data, settings_obj)
    try:
        logout_request = OneLogin_Saml2_Logout_Request(settings_obj, raw)
        logout_request.is_valid(data, raise_exceptions=True)
        xml = logout_request.get_xml()
        who = {
            "name_id": OneLogin_Saml2_Logout_Request.get_nameid(xml, settings_obj.get_sp_key())
            or "",
            "session_indexes": OneLogin_Saml2_Logout_Request.get_session_indexes(xml),
        }
        answer = OneLogin_Saml2_Logout_Response(settings_obj)
        answer.build(logout_request.id)
    except ApiError:
        raise
    except (OneLogin_Saml2_ValidationError, OneLogin_Saml2_Error) as exc:
        log.info("SAML logout request refused: %s", exc)
        raise _refuse("sso_invalid_logout", f"The logout request was refused: {exc}") from None
    except Exception as exc:
        log.info("unreadable SAML logout request: %s", exc)
        raise _refuse("sso_invalid_logout", "The logout request could not be read.") from None
    parameters = {"SAMLResponse": answer.get_response()}
    if "RelayState" in data["get_data"]:
        parameters["RelayState"] = data["get_data"]["RelayState"]
    auth.add_response_signature(parameters, Constants.RSA_SHA256)
    slo = settings_obj.get_idp_data().get("singleLogoutService") or {}
    target = slo.get("responseUrl") or slo.get("url")
    if not target:
        raise _refuse("sso_invalid_logout", "The IdP has no single logout URL configured.", 400)
    return who, OneLogin_Saml2_Utils.redirect(target, parameters, request_data=data)


def check_logout_response(request, idp: IdentityProvider) -> None:
    """The IdP's LogoutResponse to our LogoutRequest: signed by the IdP, for this SP, a
    success. ApiError otherwise (the portal session had already ended either way)."""
    raw, settings_obj, data = _logout_message(request, idp, "SAMLResponse")
    try:
        response = OneLogin_Saml2_Logout_Response(settings_obj, raw)
        if not response.is_valid(data, raise_exceptions=True):
            raise _refuse("sso_invalid_logout", "The logout response is not valid.")
        if response.get_status() != Constants.STATUS_SUCCESS:
            raise _refuse("sso_logout_failed", "The identity provider did not sign you out.")
    except ApiError:
        raise
    except Exception as exc:
        log.info("SAML logout response refused: %s", exc)
        raise _refuse("sso_invalid_logout", "The logout response could not be read.") from None


# --- metadata refresh -------------------------------------------------------------------------


def do_refresh_metadata(idp: IdentityProvider | None = None, *, force: bool = True) -> bool:
    """Re-read this org's IdP metadata from its URL; True when the stored settings changed.
    Certificates it no longer lists stay trusted for CERT_GRACE (rollover). A failure is
    logged and audited (`sso.metadata_refresh_failed`); the stored settings stay."""
    idp = idp or IdentityProvider.objects.filter(pk=1).first()
    if idp is None or idp.kind != IdentityProvider.SAML:
        return False
    url = (idp.config or {}).get("metadata_url")
    if not url:
        return False
    if (
        not force
        and idp.metadata_refreshed_at
        and timezone.now() - idp.metadata_refreshed_at < REFETCH_MIN_INTERVAL
    ):
        return False
    try:
        fresh = parse_metadata(fetch_metadata(url), idp.config.get("idp_entity_id"))
    except MetadataError as exc:
        IdentityProvider.objects.filter(pk=idp.pk).update(metadata_refreshed_at=timezone.now())
        log.warning("SAML metadata refresh failed: %s", exc)
        audit.record(
            AuditEvent.SSO_METADATA_REFRESH_FAILED,
            actor=audit.Actor.system("saml"),
            target_type="identity_provider",
            target_id=IdentityProvider.SAML,
            data={"url": url, "error": str(exc)[:300]},
        )
        return False
    with transaction.atomic():
        row = IdentityProvider.objects.select_for_update().filter(pk=1).first()
        if row is None or row.kind != IdentityProvider.SAML:
            return False
        before = dict(row.config)
        config = dict(before)
        for key in ("idp_entity_id", "sso_url", "slo_url", "idp_certs"):
            config[key] = fresh[key]
        _carry_previous_certs(config, before)
        row.config = config
        row.metadata_refreshed_at = timezone.now()
        row.save(update_fields=["config", "metadata_refreshed_at"])
        changed = config != before
        if changed:
            audit.record(
                AuditEvent.SSO_KEYS_REFRESHED,
                actor=audit.Actor.system("saml"),
                target_type="identity_provider",
                target_id=IdentityProvider.SAML,
                data={
                    "before": [_cert_info(c)["sha256"] for c in before.get("idp_certs") or []],
                    "after": [_cert_info(c)["sha256"] for c in config["idp_certs"]],
                    "kept_until": config.get("previous_certs_until"),
                    "endpoints_changed": any(
                        before.get(k) != config.get(k) for k in ("sso_url", "slo_url")
                    ),
                },
            )
    idp.config = config
    idp.metadata_refreshed_at = row.metadata_refreshed_at
    return changed


def _refetch_metadata(idp: IdentityProvider) -> bool:
    """A signature failed: re-read the metadata URL (rate-limited) in case the IdP rolled
    its signing key; True when the certificates changed and the check is worth a retry."""
    if not (idp.config or {}).get("metadata_url"):
        return False
    before = list(idp.config.get("idp_certs") or [])
    do_refresh_metadata(idp, force=False)
    return list(idp.config.get("idp_certs") or []) != before
