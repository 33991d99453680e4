"""A real OpenID provider for the OIDC tests, built on authlib's server side.

`OpenIdProvider` serves discovery, JWKS, authorize (auto-approving `provider.user`),
token (authorization code + PKCE, client_secret_basic / _post / none) and userinfo from a
small WSGI app in a thread on a free port of 127.0.0.1. The authlib grant does the
protocol work (codes bound to client, redirect URI and PKCE challenge; ID tokens with
nonce, at_hash, iss, aud, exp); the test steers what a misbehaving or attacked IdP would
send through a few knobs:

- `rotate_key()` publishes a new signing key and signs with it; `drop_key(kid)` unpublishes;
- `sign_with_foreign_key` signs with a key it does not publish, under the current kid;
- `forge_alg` sends an unsigned (`none`) or HS256-with-the-public-key token;
- `claim_overrides` replaces ID token claims (`nonce`, `aud`, `exp`/`iat`, ...);
- `deny` makes authorize answer `error=access_denied` (the person declined);
- `garbled` paths answer 200 with an HTML page instead of JSON;
- `down` answers every request with a 503 HTML page (`stop()` makes it unreachable);
- `hits` counts requests per path (the JWKS refetch limit is visible there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, JsonRequest, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

# The provider speaks plain http on loopback; authlib refuses that unless told.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_key(alg: str = "RS256"):
    """A signing key for `alg` (RS256, or ES256 on P-256)."""
    parameters = {"kid": secrets.token_hex(6), "use": "sig"}
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters)
    return RSAKey.generate_key(2048, parameters=parameters)


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    auth_method: str = "client_secret_basic"

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.auth_method if endpoint == "token" else True

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    amr: list[str] = field(default_factory=list)
    acr: str | None = None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return self.acr

    def get_amr(self):
        return self.amr


class _Request(OAuth2Request):
    def __init__(self, environ: dict, form: dict):
        url = f"http://{environ['HTTP_HOST']}{environ['PATH_INFO']}"
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        super().__init__(environ["REQUEST_METHOD"], url, headers=headers)
        self._args = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self._form = form
        self.payload = BasicOAuth2Payload({**self._args, **form})

    @property
    def args(self):
        return self._args

    @property
    def form(self):
        return self._form


class _Server(AuthorizationServer):
    def __init__(self, provider: OpenIdProvider):
        super().__init__(scopes_supported=["openid", "profile", "email", "groups"])
        self.provider = provider
        self.register_token_generator("default", BearerTokenGenerator(self._access_token))

    @staticmethod
    def _access_token(client, grant_type, user, scope):
        return secrets.token_urlsafe(24)

    def query_client(self, client_id):
        return self.provider.clients.get(client_id)

    def save_token(self, token, request):
        self.provider.access_tokens[token["access_token"]] = request.user

    def create_oauth2_request(self, request):
        return request

    def create_json_request(self, request):
        return JsonRequest(request.method, request.uri, request.headers)

    def handle_response(self, status, body, headers):
        return status, body, headers

    def send_signal(self, name, *args, **kwargs):
        pass


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code, request):
        provider: OpenIdProvider = self.server.provider
        payload = request.payload.data
        provider.codes[code] = Code(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=payload.get("redirect_uri", ""),
            scope=request.scope,
            user=dict(request.user),
            nonce=payload.get("nonce"),
            code_challenge=payload.get("code_challenge"),
            code_challenge_method=payload.get("code_challenge_method"),
            amr=list(provider.amr),
            acr=provider.acr,
        )

    def query_authorization_code(self, code, client):
        item = self.server.provider.codes.get(code)
        return item if item and item.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code):
        self.server.provider.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


class _Pkce(CodeChallenge):
    def get_authorization_code_challenge(self, authorization_code):
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code):
        return authorization_code.code_challenge_method


class _OpenIdCode(OpenIDCode):
    def __init__(self, provider: OpenIdProvider):
        super().__init__(require_nonce=True)
        self.provider = provider

    def exists_nonce(self, nonce, request):
        return any(c.nonce == nonce for c in self.provider.codes.values())

    def resolve_client_private_key(self, client):
        p = self.provider
        return p.foreign_key if p.sign_with_foreign_key else p.signing_key

    def get_client_algorithm(self, client):
        return self.provider.alg

    def get_encode_header(self, client):
        return {"alg": self.provider.alg, "kid": self.provider.signing_key.kid}

    def get_client_claims(self, client):
        now = int(time.time())
        return {
            "iss": self.provider.issuer,
            "aud": [client.get_client_id()],
            "iat": now,
            "exp": now + 300,
        }

    def generate_user_info(self, user, scope):
        claims = {k: v for k, v in user.items() if k == "sub" or k in self.provider.id_token_claims}
        return UserInfo(claims)

    def encode_id_token(self, token, request):
        encoded = super().encode_id_token(token, request)
        provider = self.provider
        overrides = provider.claim_overrides
        if not overrides and not provider.forge_alg:
            return encoded
        key = self.resolve_client_private_key(None)
        claims = jwt.decode(encoded, key).claims
        claims.update(overrides)
        for name in [k for k, v in overrides.items() if v is None]:
            claims.pop(name)
        header = self.get_encode_header(None)
        if provider.forge_alg:
            return forge(header, claims, provider.forge_alg, provider.signing_key)
        return jwt.encode(header, claims, key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, alg: str, public_key: RSAKey) -> str:
    """A token an attacker can make without the IdP's private key: unsigned (`none`), or
    HS256 with the IdP's *public* key as the MAC secret (the classic algorithm confusion),
    under the IdP's real kid. joserfc itself refuses to make either, so by hand."""
    head = _b64(json.dumps({**header, "alg": alg}).encode())
    body = _b64(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    if alg == "none":
        return f"{head}.{body}."
    secret = public_key.as_pem(private=False)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class OpenIdProvider:
    """One OpenID provider on http://127.0.0.1:<port> (see the module docstring)."""

    def __init__(self):
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys: list[RSAKey] = [new_key()]
        self.signing_key = self.keys[0]
        self.foreign_key = new_key()
        self.alg = "RS256"  # what it signs ID tokens with (and advertises)
        self.sign_with_foreign_key = False
        self.forge_alg: str | None = None  # "none" or "HS256" (see `forge`)
        self.claim_overrides: dict = {}
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.access_tokens: dict[str, dict] = {}
        self.user: dict = {"sub": "nobody"}
        # What goes into the ID token (the rest only through userinfo).
        self.id_token_claims = {"preferred_username", "email", "name", "groups"}
        self.amr: list[str] = ["pwd"]
        self.acr: str | None = None
        self.down = False
        self.garbled: set[str] = set()  # paths answering 200 with HTML instead of JSON
        self.deny = False  # the person declines: authorize answers error=access_denied
        self.extra_discovery: dict = {}
        self.hits: Counter[str] = Counter()
        self.logged_out: list[str] = []  # subjects whose RP-initiated logout came in
        self.server = _Server(self)
        self.server.register_grant(_CodeGrant, [_Pkce(required=True), _OpenIdCode(self)])
        self._httpd = make_server(
            "127.0.0.1",
            self.port,
            self._app,
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    # --- knobs ------------------------------------------------------------------------------

    def add_client(
        self, redirect_uris: list[str], *, auth_method: str = "client_secret_basic"
    ) -> Client:
        client = Client(
            client_id=f"siphera-{secrets.token_hex(4)}",
            client_secret="" if auth_method == "none" else secrets.token_urlsafe(24),
            redirect_uris=redirect_uris,
            auth_method=auth_method,
        )
        self.clients[client.client_id] = client
        return client

    def rotate_key(self) -> RSAKey:
        """Publish a new key and sign with it from now on (the old one stays published)."""
        key = new_key()
        self.keys.append(key)
        self.signing_key = key
        return key

    def drop_key(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- the WSGI app -----------------------------------------------------------------------

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "end_session_endpoint": f"{self.issuer}/logout",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.alg],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            **self.extra_discovery,
        }

    def _app(self, environ, start_response):
        path = environ["PATH_INFO"]
        self.hits[path] += 1
        form: dict = {}
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}

        def send(status: int, body, headers=None):
            headers = list(headers or [])
            if isinstance(body, dict | list):
                body = json.dumps(body)
                headers.append(("Content-Type", "application/json"))
            data = (body or "").encode()
            phrase = HTTPStatus(status).phrase
            start_response(f"{status} {phrase}", [*headers, ("Content-Length", str(len(data)))])
            return [data]

        if self.down:
            return send(503, "<html>maintenance</html>", [("Content-Type", "text/html")])
        if path in self.garbled:
            return send(200, "<html>not JSON</html>", [("Content-Type", "text/html")])
        if path == "/.well-known/openid-configuration":
            return send(200, self.discovery())
        if path == "/jwks":
            return send(200, KeySet(self.keys).as_dict(private=False))
        request = _Request(environ, form)
        if path == "/authorize":
            try:
                grant = self.server.get_consent_grant(request, end_user=self.user)
            except Exception as exc:  # an invalid request: authlib's error, shown as 400
                return send(400, {"error": getattr(exc, "error", "invalid_request")})
            status, body, headers = self.server.create_authorization_response(
                request, grant_user=None if self.deny else self.user, grant=grant
            )
            return send(status, body, headers)
        if path == "/token":
            status, body, headers = self.server.create_token_response(request)
            return send(status, body, headers)
        if path == "/logout":
            # RP-initiated logout: the hint must be an ID token this provider issued.
            args = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            try:
                hint = jwt.decode(args.get("id_token_hint", ""), KeySet(self.keys)).claims
            except Exception:
                return send(400, {"error": "invalid_request"})
            if hint.get("iss") != self.issuer or args.get("client_id") not in hint["aud"]:
                return send(400, {"error": "invalid_request"})
            self.logged_out.append(hint["sub"])
            return send(302, "", [("Location", args["post_logout_redirect_uri"])])
        if path == "/userinfo":
            token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
            user = self.access_tokens.get(token)
            if user is None:
                return send(401, {"error": "invalid_token"})
            return send(200, user)
        return send(404, {"error": "not_found"})
