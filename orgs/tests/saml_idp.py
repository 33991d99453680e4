"""A real SAML 2.0 identity provider for the tests: pysaml2's `saml2.server.Server` behind a
small WSGI server on 127.0.0.1 (a thread of the test process).

It signs (and, when asked, encrypts) with its own key and certificate, made here with
`cryptography`; pysaml2 calls the xmlsec1 binary for that (scripts/ensure_xmlsec1.sh).
It learns a service provider from that SP's metadata (`add_sp`), approves whoever the test
put in `next_user` without a login form, and answers:

- GET /sso?SAMLRequest=... (HTTP-Redirect): checks the AuthnRequest's signature against
  the SP's certificate, then returns an HTML form that POSTs the SAMLResponse to the SP's
  ACS (a browser submits it by script; an HTTP test reads the form);
- GET /slo?SAMLRequest=... : an SP-initiated LogoutRequest, signature checked; answers
  with a signed LogoutResponse by redirect; GET /slo?SAMLResponse=...: the SP's answer to
  the IdP's own LogoutRequest (kept in `logout_responses`);
- GET /metadata: its metadata (what an org uploads or points its metadata URL at).

Knobs a test turns: `sign_response`, `sign_assertion`, `encrypt_assertion`,
`lifetime_minutes` (negative: already expired), `clock_offset` (seconds the IdP's clock is
ahead), `audience` (another SP entity id in the assertion), `omit_in_response_to`.
"""

from __future__ import annotations

import base64
import html
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
MFA_CONTEXT = "https://refeds.org/profile/mfa"
SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.S)
_INPUT = re.compile(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.S)


def make_key_pair(common_name: str) -> tuple[bytes, bytes]:
    """(private key PEM, self-signed certificate PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def cert_body(pem: bytes) -> str:
    return "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))


@dataclass
class Person:
    """Who the IdP signs in next."""

    name_id: str = field(default_factory=lambda: f"id-{secrets.token_hex(8)}")
    attributes: dict[str, list[str]] = field(default_factory=dict)
    authn_context: str = PASSWORD_CONTEXT
    name_id_format: str = PERSISTENT


@dataclass
class SentResponse:
    """A response the IdP handed the browser: where it goes and what it carries."""

    acs: str
    saml_response: str
    relay_state: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.acs).path

    def form(self) -> dict:
        data = {"SAMLResponse": self.saml_response}
        if self.relay_state:
            data["RelayState"] = self.relay_state
        return data

    def xml(self) -> str:
        return base64.b64decode(self.saml_response).decode()


class _Threads(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class SamlIdp:
    def __init__(self, name: str = "idp", *, entity_id: str | None = None, port: int = 0):
        from saml2 import BINDING_HTTP_REDIRECT
        from saml2.config import IdPConfig

        self._dir = Path(tempfile.mkdtemp(prefix=f"saml-{name}-"))
        self._http = make_server(
            "127.0.0.1", port, self._app, server_class=_Threads, handler_class=_Quiet
        )
        self.port = self._http.server_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.entity_id = entity_id or f"{self.base}/metadata"
        self.key_pem, self.cert_pem = make_key_pair(f"Test IdP {name}")
        self._write_keys()
        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [(f"{self.base}/sso", BINDING_HTTP_REDIRECT)],
                            "single_logout_service": [(f"{self.base}/slo", BINDING_HTTP_REDIRECT)],
                        },
                        "policy": {"default": {"lifetime": {"minutes": 15}}},
                        "name_id_format": [PERSISTENT, TRANSIENT],
                        "want_authn_requests_signed": False,  # checked here, by hand
                    }
                },
                "key_file": str(self._dir / "key.pem"),
                "cert_file": str(self._dir / "cert.pem"),
                "xmlsec_binary": "/usr/bin/xmlsec1",
                "signing_algorithm": SHA256,
                "digest_algorithm": DIGEST_SHA256,
            }
        )
        self._config = config
        self.server = self._new_server()
        self._sp_certs: dict[str, str] = {}
        self.reset()
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    # --- test controls -----------------------------------------------------------------------

    def reset(self) -> None:
        self.next_user = Person()
        self.sign_response = True
        self.sign_assertion = True
        self.encrypt_assertion = False
        self.lifetime_minutes = 15
        self.clock_offset = 0
        self.audience: str | None = None
        self.omit_in_response_to = False
        self.sessions: dict[str, tuple[str, str]] = {}  # session index -> (sp, name id)
        self.logout_requests: list = []
        self.logout_responses: list = []
        self.last_authn_request = None

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
            self._http.server_close()

    def _write_keys(self) -> None:
        (self._dir / "key.pem").write_bytes(self.key_pem)
        (self._dir / "cert.pem").write_bytes(self.cert_pem)

    def roll_key(self) -> None:
        """A new signing key and certificate (what a real IdP's key rollover does)."""
        self.key_pem, self.cert_pem = make_key_pair("Test IdP rolled")
        self._write_keys()
        sps = dict(self._sp_metadata)
        self.server = self._new_server()
        self._sp_metadata = {}
        for xml in sps.values():
            self.add_sp(xml)

    def _new_server(self):
        from saml2.mdstore import MetadataStore
        from saml2.server import Server

        server = Server(config=self._config)
        store = MetadataStore(self._config.attribute_converters, self._config)
        server.metadata = store
        self._config.metadata = store
        return server

    @property
    def cert_body(self) -> str:
        return cert_body(self.cert_pem)

    def metadata(self) -> str:
        from saml2.metadata import create_metadata_string

        return create_metadata_string(None, config=self._config, valid=4).decode()

    _sp_metadata: dict[str, str] = {}

    def add_sp(self, sp_metadata_xml: str) -> str:
        """Trust an SP from its metadata; returns its entity id."""
        from saml2.mdstore import InMemoryMetaData

        md = InMemoryMetaData(self.server.config.attribute_converters, sp_metadata_xml)
        md.load()
        self.server.metadata.metadata[f"sp-{len(self._sp_metadata)}-{secrets.token_hex(4)}"] = md
        [entity_id] = [e for e in md.keys()]
        self._sp_metadata = {**self._sp_metadata, entity_id: sp_metadata_xml}
        certs = self.server.metadata.certs(entity_id, "spsso", "signing")
        if certs:
            self._sp_certs[entity_id] = certs[0][1]
        return entity_id

    # --- building messages -------------------------------------------------------------------

    def response_for(
        self, sp_entity_id: str, acs: str, in_response_to: str | None, person: Person | None = None
    ) -> SentResponse:
        """A SAMLResponse for `person` (default `next_user`) to the SP, as configured now."""
        import saml2.assertion
        from saml2 import time_util
        from saml2.assertion import Policy
        from saml2.saml import NameID

        person = person or self.next_user
        session_index = f"_s{secrets.token_hex(8)}"
        offset = self.clock_offset

        def shifted_instant(format=time_util.TIME_FORMAT, time_stamp=0):  # noqa: A002
            return time_util.instant(format, int(time_stamp or time.time()) + offset)

        def shifted_in_a_while(**kwargs):
            fmt = kwargs.pop("format", time_util.TIME_FORMAT)
            when = time.gmtime(time.time() + offset + timedelta(**kwargs).total_seconds())
            return time.strftime(fmt, when)

        policy = Policy(
            {"default": {"lifetime": {"minutes": self.lifetime_minutes}}}, mds=self.server.metadata
        )
        kwargs = {}
        if self.encrypt_assertion:
            certs = self.server.metadata.certs(sp_entity_id, "spsso", "encryption")
            kwargs["encrypt_cert_assertion"] = certs[0][1] if certs else None
        originals = (saml2.assertion.instant, saml2.assertion.in_a_while)
        saml2.assertion.instant, saml2.assertion.in_a_while = shifted_instant, shifted_in_a_while
        try:
            response = self.server.create_authn_response(
                identity=person.attributes,
                in_response_to=None if self.omit_in_response_to else in_response_to,
                destination=acs,
                sp_entity_id=self.audience or sp_entity_id,
                name_id=NameID(format=person.name_id_format, text=person.name_id),
                authn={"class_ref": person.authn_context, "authn_auth": self.entity_id},
                sign_response=self.sign_response,
                sign_assertion=self.sign_assertion,
                encrypt_assertion=self.encrypt_assertion,
                session_not_on_or_after=None,
                sign_alg=SHA256,
                digest_alg=DIGEST_SHA256,
                session_index=session_index,
                release_policy=policy,
                **kwargs,
            )
        finally:
            saml2.assertion.instant, saml2.assertion.in_a_while = originals
        text = str(response)
        found = re.search(r'SessionIndex="([^"]+)"', text)  # pysaml2 may pick its own
        self.sessions[found.group(1) if found else session_index] = (sp_entity_id, person.name_id)
        return SentResponse(acs=acs, saml_response=base64.b64encode(text.encode()).decode())

    def unsolicited(self, sp_entity_id: str, person: Person | None = None) -> SentResponse:
        """An IdP-initiated sign-in at the SP (no AuthnRequest)."""
        acs = self.server.metadata.assertion_consumer_service(sp_entity_id)[0]["location"]
        return self.response_for(sp_entity_id, acs, None, person)

    def logout_request_url(self, sp_entity_id: str, name_id: str, session_index: str) -> str:
        """The redirect (URL) that an IdP-initiated logout sends the browser to."""
        from saml2 import BINDING_HTTP_REDIRECT
        from saml2.saml import NameID

        sls = self.server.metadata.single_logout_service(
            sp_entity_id, BINDING_HTTP_REDIRECT, "spsso"
        )[0]["location"]
        _id, request = self.server.create_logout_request(
            destination=sls,
            issuer_entity_id=sp_entity_id,
            name_id=NameID(format=PERSISTENT, text=name_id),
            session_indexes=[session_index] if session_index else None,
            sign=False,
        )
        info = self.server.apply_binding(
            BINDING_HTTP_REDIRECT, str(request), sls, "", sign=True, sigalg=SHA256
        )
        return dict(info["headers"])["Location"]

    def logout_request_post(
        self, sp_entity_id: str, name_id: str, session_index: str, *, sign: bool = True
    ) -> tuple[str, dict]:
        """An IdP-initiated LogoutRequest for the HTTP-POST binding: (the SP's SLS path,
        the form), the signature inside the XML."""
        from saml2 import BINDING_HTTP_REDIRECT
        from saml2.saml import NameID

        sls = self.server.metadata.single_logout_service(
            sp_entity_id, BINDING_HTTP_REDIRECT, "spsso"
        )[0]["location"]
        _id, request = self.server.create_logout_request(
            destination=sls,
            issuer_entity_id=sp_entity_id,
            name_id=NameID(format=PERSISTENT, text=name_id),
            session_indexes=[session_index] if session_index else None,
            sign=sign,
            sign_alg=SHA256,
            digest_alg=DIGEST_SHA256,
        )
        xml = str(request)
        return urlsplit(sls).path, {"SAMLRequest": base64.b64encode(xml.encode()).decode()}

    def check_logout_response(self, query: str):
        """Parse (and verify the signature of) the SP's LogoutResponse in `query`."""
        from saml2 import BINDING_HTTP_REDIRECT

        args = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        sp = self._sp_for_signature(args)
        assert sp, "the LogoutResponse is not signed by a known SP"
        return self.server.parse_logout_request_response(
            args["SAMLResponse"], BINDING_HTTP_REDIRECT
        )

    def _sp_for_signature(self, args: dict, only: str | None = None) -> str | None:
        from saml2.sigver import verify_redirect_signature

        if "Signature" not in args:
            return None
        for entity_id, cert in self._sp_certs.items():
            if only is not None and entity_id != only:
                continue
            try:
                if verify_redirect_signature(args, self.server.sec.sec_backend, cert=cert):
                    return entity_id
            except Exception:  # noqa: S112
                continue
        return None

    # --- HTTP --------------------------------------------------------------------------------

    def _app(self, environ, start_response):
        try:
            path = environ.get("PATH_INFO", "")
            query = environ.get("QUERY_STRING", "")
            if path == "/metadata":
                return self._reply(start_response, "200 OK", self.metadata(), "application/xml")
            if path == "/sso":
                return self._sso(start_response, query)
            if path == "/slo":
                return self._slo(start_response, query)
            return self._reply(start_response, "404 Not Found", "not found")
        except Exception as exc:  # the test sees what went wrong
            import traceback

            traceback.print_exc()
            return self._reply(start_response, "500 Internal Server Error", repr(exc))

    def _reply(
        self, start_response, status, body: str, ctype="text/html; charset=utf-8", headers=()
    ):
        data = body.encode()
        start_response(
            status, [("Content-Type", ctype), ("Content-Length", str(len(data))), *headers]
        )
        return [data]

    def _sso(self, start_response, query: str):
        from saml2 import BINDING_HTTP_REDIRECT

        args = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        request = self.server.parse_authn_request(args["SAMLRequest"], BINDING_HTTP_REDIRECT)
        message = request.message
        sp = message.issuer.text
        if self._sp_for_signature(args, only=sp) != sp:
            return self._reply(start_response, "403 Forbidden", "AuthnRequest not signed by its SP")
        self.last_authn_request = message
        sent = self.response_for(
            sp, message.assertion_consumer_service_url or self.acs_of(sp), message.id
        )
        sent.relay_state = args.get("RelayState", "")
        return self._reply(start_response, "200 OK", self.post_form(sent))

    def acs_of(self, sp: str) -> str:
        return self.server.metadata.assertion_consumer_service(sp)[0]["location"]

    @staticmethod
    def post_form(sent: SentResponse) -> str:
        relay = (
            f'<input type="hidden" name="RelayState" value="{html.escape(sent.relay_state)}">'
            if sent.relay_state
            else ""
        )
        return (
            "<!doctype html><html><body>"
            f'<form id="saml" method="post" action="{html.escape(sent.acs)}">'
            f'<input type="hidden" name="SAMLResponse" value="{sent.saml_response}">{relay}'
            '<button type="submit">Continue to the service</button></form>'
            "<script>document.getElementById('saml').submit()</script>"
            "</body></html>"
        )

    def _slo(self, start_response, query: str):
        from saml2 import BINDING_HTTP_REDIRECT

        args = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if "SAMLResponse" in args:
            answer = self.server.parse_logout_request_response(
                args["SAMLResponse"], BINDING_HTTP_REDIRECT
            )
            sp = answer.response.issuer.text
            if self._sp_for_signature(args, only=sp) != sp:
                return self._reply(start_response, "403 Forbidden", "logout answer not signed")
            self.logout_responses.append(answer)
            return self._reply(start_response, "200 OK", "<p>Signed out everywhere.</p>")
        request = self.server.parse_logout_request(args["SAMLRequest"], BINDING_HTTP_REDIRECT)
        sp = request.message.issuer.text
        if self._sp_for_signature(args, only=sp) != sp:
            return self._reply(start_response, "403 Forbidden", "logout request not signed")
        self.logout_requests.append(request.message)
        for index in [si.text for si in request.message.session_index or []]:
            self.sessions.pop(index, None)
        response = self.server.create_logout_response(
            request.message, [BINDING_HTTP_REDIRECT], sign=False
        )
        sls = self.server.metadata.single_logout_service(sp, BINDING_HTTP_REDIRECT, "spsso")[0][
            "location"
        ]
        info = self.server.apply_binding(
            BINDING_HTTP_REDIRECT,
            str(response),
            sls,
            args.get("RelayState", ""),
            response=True,
            sign=True,
            sigalg=SHA256,
        )
        location = dict(info["headers"])["Location"]
        return self._reply(start_response, "302 Found", "", headers=[("Location", location)])


def read_post_form(page: str) -> SentResponse:
    """The ACS URL and SAMLResponse of the IdP's auto-submitting form."""
    action = html.unescape(_FORM.search(page).group(1))
    values = {name: html.unescape(value) for name, value in _INPUT.findall(page)}
    return SentResponse(
        acs=action, saml_response=values["SAMLResponse"], relay_state=values.get("RelayState", "")
    )


def query_of(url: str) -> str:
    return urlsplit(url).query


__all__ = ["Person", "SamlIdp", "SentResponse", "read_post_form", "query_of", "urlencode"]
