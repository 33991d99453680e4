"""An org's own host names over the API (/api/v1/org/domains): claimed, proven with a DNS
TXT record against a real (local) DNS server, routed at once, removed; who may, and what
another org sees."""

from __future__ import annotations

import httpx
import pytest

from orgs.accounts.models import AuditEntry
from orgs.services.domains import lookup_txt, nameserver
from siphera.api_errors import ApiError
from siphera.tenancy import in_tenant
from tests.fixtures import (
    Api,
    create_org,
    host_of,
    make_user,
    register_device,
    unique,
)


def owner_api(server, org, role: str = "owner") -> Api:
    user = make_user(org, role=role)
    api = Api(server, host_of(org))
    _, token, _ = register_device(api, user.username)
    api = api.as_device(token)
    api.user = user
    return api


def events(org, name: str) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=name).order_by("id")))


def test_a_claimed_domain_routes_only_after_its_txt_record_proves_it(dns, dns_web):
    org = create_org(unique("dm"))
    api = owner_api(dns_web, org)
    name = f"{unique('chat')}.example.test"
    # Given an owner claims a host name
    claimed = api.post("/api/v1/org/domains", json={"domain": name.upper() + "."})
    assert claimed.status_code == 201, claimed.text
    body = claimed.json()
    assert body["domain"] == name and body["status"] == "pending"
    assert body["txt_name"] == f"_siphera-verify.{name}"
    assert body["txt_value"].startswith("siphera-verify=")
    # Then it routes nowhere yet
    assert httpx.get(f"{dns_web.url}/portal/login", headers={"Host": name}).status_code == 404
    # When they verify before publishing the record: refused, noted and audited
    early = api.post(f"/api/v1/org/domains/{name}/verify")
    assert early.status_code == 409 and early.json()["error"]["code"] == "domain_not_verified"
    assert f"_siphera-verify.{name}" in dns.queries
    listed = {d["domain"]: d for d in api.get("/api/v1/org/domains").json()}
    assert listed[name]["last_error"] and listed[name]["checked_at"]
    assert [e.data["code"] for e in events(org, "org.domain_verification_failed")] == [
        "domain_not_verified"
    ]
    # A record with another token does not pass either
    dns.set_txt(body["txt_name"], "siphera-verify=someone-else", "v=spf1 -all")
    assert api.post(f"/api/v1/org/domains/{name}/verify").status_code == 409
    # When the record holds the token, verifying routes the name to the org at once
    dns.set_txt(body["txt_name"], "v=spf1 -all", body["txt_value"])
    verified = api.post(f"/api/v1/org/domains/{name}/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"domain": name, "status": "verified", "primary": False}
    page = httpx.get(f"{dns_web.url}/portal/login", headers={"Host": name})
    assert page.status_code == 200 and org.name in page.text
    assert [e.data["domain"] for e in events(org, "org.domain_added")] == [name]
    assert [e.target_id for e in events(org, "org.domain_claimed")] == [name]
    # And removing it stops the routing (audited)
    assert api.delete(f"/api/v1/org/domains/{name}").status_code == 204
    assert httpx.get(f"{dns_web.url}/portal/login", headers={"Host": name}).status_code == 404
    assert [e.data for e in events(org, "org.domain_removed")] == [
        {"domain": name, "was": "verified"}
    ]


def test_domain_rules_primary_current_taken_invalid_and_other_orgs(dns_web, org_b):
    org = create_org(unique("dm"))
    api = owner_api(dns_web, org)
    primary = host_of(org)
    # The primary name (also the one this request came in on) cannot be removed
    refused = api.delete(f"/api/v1/org/domains/{primary}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "primary_domain"
    # A name another org routes is taken; a bad name is a 400; the same claim twice is one
    taken = api.post("/api/v1/org/domains", json={"domain": host_of(org_b)})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "domain_taken"
    too_long = ".".join(["a" * 60] * 4)  # a valid host name, but not with the TXT label
    for bad in ("", "-bad-.test", "a" * 300, "exa mple.test", "x..test", too_long):
        response = api.post("/api/v1/org/domains", json={"domain": bad})
        assert response.status_code == 400, (bad, response.text)
    name = f"{unique('two')}.example.test"
    first = api.post("/api/v1/org/domains", json={"domain": name}).json()
    again = api.post("/api/v1/org/domains", json={"domain": name}).json()
    assert first["txt_value"] == again["txt_value"]
    # Another org sees none of it: 404 for this org's pending and verified names
    other = owner_api(dns_web, org_b)
    assert other.post(f"/api/v1/org/domains/{name}/verify").status_code == 404
    assert other.delete(f"/api/v1/org/domains/{name}").status_code == 404
    assert other.delete(f"/api/v1/org/domains/{primary}").status_code == 404
    assert name not in {d["domain"] for d in other.get("/api/v1/org/domains").json()}
    # A pending claim is removed outright
    assert api.delete(f"/api/v1/org/domains/{name}").status_code == 204
    assert api.post(f"/api/v1/org/domains/{name}/verify").status_code == 404


def test_only_org_managers_manage_domains(dns_web):
    org = create_org(unique("dm"))
    admin = owner_api(dns_web, org, role="admin")  # everything but org.manage
    for method, path in (
        ("GET", "/api/v1/org/domains"),
        ("POST", "/api/v1/org/domains"),
        ("POST", "/api/v1/org/domains/x.test/verify"),
        ("DELETE", "/api/v1/org/domains/x.test"),
    ):
        response = admin.request(method, path, json={"domain": "x.test"})
        assert response.status_code == 403, (method, path)
        assert response.json()["permission"] == "org.manage"


def test_an_unreachable_resolver_is_a_503_never_a_pass(dns, dns_web):
    org = create_org(unique("dm"))
    api = owner_api(dns_web, org)
    name = f"{unique('mute')}.example.test"
    claim = api.post("/api/v1/org/domains", json={"domain": name}).json()
    dns.set_txt(claim["txt_name"], claim["txt_value"])
    dns.silent = True
    try:
        response = api.post(f"/api/v1/org/domains/{name}/verify")
    finally:
        dns.silent = False
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "dns_unavailable"
    assert httpx.get(f"{dns_web.url}/portal/login", headers={"Host": name}).status_code == 404


def test_the_first_org_to_verify_a_name_gets_it(dns, dns_web):
    one, two = create_org(unique("dm")), create_org(unique("dm"))
    api_one, api_two = owner_api(dns_web, one), owner_api(dns_web, two)
    name = f"{unique('race')}.example.test"
    claim_one = api_one.post("/api/v1/org/domains", json={"domain": name}).json()
    claim_two = api_two.post("/api/v1/org/domains", json={"domain": name}).json()
    assert claim_one["txt_value"] != claim_two["txt_value"]
    dns.set_txt(claim_one["txt_name"], claim_one["txt_value"], claim_two["txt_value"])
    assert api_one.post(f"/api/v1/org/domains/{name}/verify").status_code == 200
    late = api_two.post(f"/api/v1/org/domains/{name}/verify")
    assert late.status_code == 409 and late.json()["error"]["code"] == "domain_taken"
    page = httpx.get(f"{dns_web.url}/portal/login", headers={"Host": name})
    assert one.name in page.text


def test_an_ip_address_a_bare_label_or_localhost_cannot_be_claimed(dns, dns_web):
    # Names that reach the server without any org's DNS (a probe by address, an operator
    # on the machine) are no org's to take, whatever a resolver answers for them.
    org = create_org(unique("dm"))
    api = owner_api(dns_web, org)
    for name in (
        "127.0.0.1",
        "10.0.0.5.",
        "0x7f.1",
        "1.2.3.4e",
        "intranet",
        "localhost",
        "LOCALHOST.",
        "app.localhost",
        5,
    ):
        dns.set_txt(f"_siphera-verify.{str(name).lower().rstrip('.')}", "anything")
        refused = api.post("/api/v1/org/domains", json={"domain": name})
        assert refused.status_code == 400, (name, refused.text)
        assert refused.json()["error"]["code"] == "invalid_domain"
    assert [d["domain"] for d in api.get("/api/v1/org/domains").json()] == [host_of(org)]
    assert events(org, "org.domain_claimed") == []
    # A punycode name or a single-letter top-level label is fine.
    for name in ("xn--bcher-kva.example", "chat.example.x"):
        assert api.post("/api/v1/org/domains", json={"domain": name}).status_code == 201


def test_claims_and_verifications_of_one_name_at_once_answer_alike(dns, dns_web):
    # A double submit from the portal or a retrying client: every claim answers the one
    # claim, every verification the routed name; never a 500.
    import threading

    org = create_org(unique("dm"))
    api = owner_api(dns_web, org)
    name = f"{unique('twice')}.example.test"
    answers: list = []
    barrier = threading.Barrier(6)

    def call(method, path, **kwargs):
        barrier.wait()
        answers.append(api.request(method, path, **kwargs))

    def together(method, path, **kwargs):
        answers.clear()
        threads = [
            threading.Thread(target=call, args=(method, path), kwargs=kwargs) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return list(answers)

    claims = together("POST", "/api/v1/org/domains", json={"domain": name})
    assert [r.status_code for r in claims] == [201] * 6, [r.text for r in claims]
    assert len({r.json()["txt_value"] for r in claims}) == 1
    assert len(events(org, "org.domain_claimed")) == 1

    dns.set_txt(claims[0].json()["txt_name"], claims[0].json()["txt_value"])
    verified = together("POST", f"/api/v1/org/domains/{name}/verify")
    assert [r.status_code for r in verified] == [200] * 6, [r.text for r in verified]
    assert {r.json()["status"] for r in verified} == {"verified"}
    assert [e.data["domain"] for e in events(org, "org.domain_added")] == [name]
    assert events(org, "org.domain_verification_failed") == []


@pytest.mark.parametrize(
    ("entry", "address", "port"),
    [
        ("192.0.2.53", "192.0.2.53", 53),
        (" 192.0.2.53:5353 ", "192.0.2.53", 5353),
        ("2001:db8::53", "2001:db8::53", 53),
        ("[2001:db8::53]:5353", "2001:db8::53", 5353),
        ("[2001:DB8::53]", "2001:db8::53", 53),
    ],
)
def test_a_nameserver_is_an_address_with_an_optional_port(entry, address, port):
    server = nameserver(entry)
    assert (server.address, server.port) == (address, port)


@pytest.mark.parametrize(
    "entry", ["dns.example.com", "192.0.2.53:0", "192.0.2.53:70000", "[2001:db8::53]:x", "1.2.3"]
)
def test_a_nameserver_that_is_no_address_is_refused_as_the_operators_to_fix(settings, entry):
    assert pytest.raises(ValueError, nameserver, entry)
    settings.DOMAIN_VERIFY_NAMESERVERS = [entry]
    with pytest.raises(ApiError) as refused:
        lookup_txt("_siphera-verify.chat.example.test")
    assert refused.value.status_code == 503 and "operator" in refused.value.message
