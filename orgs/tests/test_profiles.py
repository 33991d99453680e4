"""Profiles (PATCH /me, an admin's edit), avatars (hostile images included) and the
directory search — each under the directory rules and from the other org's side."""

import io
import os
import struct
import zlib

import pytest
from PIL import Image

from orgs.accounts.models import AuditEntry, User
from siphera.tenancy import in_tenant
from tests.fixtures import make_user, unique


def image_bytes(size=(640, 480), fmt="JPEG", color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid, tiny PNG header declaring `width` x `height` pixels of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x00" * (width // 8 + 1)
    raw = zlib.compress(row * 64)  # a few rows are enough: Pillow reads the header first
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def put_avatar(api, data: bytes, path="/api/v1/me/avatar", content_type="image/jpeg"):
    return api.request("PUT", path, content=data, headers={"Content-Type": content_type})


def patch(api, path, body):
    return api.request("PATCH", path, json=body)


# --- PATCH /me -------------------------------------------------------------------------------


def test_a_user_edits_their_own_profile(org_a, new_session):
    session = new_session(org_a)
    response = patch(
        session.api,
        "/api/v1/me",
        {"display_name": "  Ada   Lovelace ", "title": "Analyst", "time_zone": "Europe/London"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["display_name"], body["title"], body["time_zone"]) == (
        "Ada Lovelace",
        "Analyst",
        "Europe/London",
    )
    assert session.api.get("/api/v1/me").json()["title"] == "Analyst"
    entry = in_tenant(
        org_a,
        lambda: AuditEntry.objects.filter(
            event="member.profile_changed", target_id=str(session.user.pk)
        ).last(),
    )
    assert entry.data["after"]["time_zone"] == "Europe/London"


def test_emoji_sequences_and_other_scripts_are_fine_in_names(org_a, new_session):
    session = new_session(org_a)
    name = "Zo\u00eb \U0001f469\u200d\U0001f4bb \u0645\u0631\u064a\u0645"
    response = patch(session.api, "/api/v1/me", {"display_name": name})
    assert response.status_code == 200 and response.json()["display_name"] == name


@pytest.mark.parametrize(
    "body",
    [
        {"time_zone": "Mars/Olympus_Mons"},
        {"display_name": "x" * 201},
        {"title": "line\u202eevil"},
        {"display_name": 42},
        {"role": "owner"},
    ],
)
def test_bad_profile_input_is_a_clear_400_and_changes_nothing(org_a, new_session, body):
    session = new_session(org_a)
    response = patch(session.api, "/api/v1/me", body)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    me = in_tenant(org_a, User.objects.get, pk=session.user.pk)
    assert (me.display_name, me.title, me.time_zone, me.role) == ("", "", "", "member")


def test_an_admin_edits_a_members_profile_but_not_an_owners(org_a, org_b, new_session):
    admin = new_session(org_a, role="admin")
    member = make_user(org_a)
    owner = make_user(org_a, role="owner")
    stranger = make_user(org_b)
    ok = patch(admin.api, f"/api/v1/users/{member.pk}/profile", {"title": "Engineer"})
    assert ok.status_code == 200 and ok.json()["title"] == "Engineer"
    assert patch(admin.api, f"/api/v1/users/{owner.pk}/profile", {"title": "x"}).status_code == 403
    other_org = patch(admin.api, f"/api/v1/users/{stranger.pk}/profile", {"title": "x"})
    assert other_org.status_code == 404
    plain = new_session(org_a)
    assert patch(plain.api, f"/api/v1/users/{member.pk}/profile", {"title": "x"}).status_code == 403


# --- avatars ---------------------------------------------------------------------------------


def test_an_avatar_is_reencoded_to_a_256_png_and_served_to_colleagues(org_a, new_session):
    session = new_session(org_a)
    colleague = new_session(org_a)
    response = put_avatar(session.api, image_bytes((1200, 800)))
    assert response.status_code == 200, response.text
    url = response.json()["avatar_url"]
    assert url == f"/api/v1/users/{session.user.pk}/avatar"
    served = colleague.api.get(url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    assert colleague.api.get(f"/api/v1/users/{session.user.pk}").json()["avatar_url"] == url


def test_replacing_and_removing_an_avatar_deletes_the_old_blob(org_a, new_session, media_root):
    session = new_session(org_a)
    put_avatar(session.api, image_bytes(fmt="PNG"), content_type="image/png")
    first = in_tenant(org_a, User.objects.get, pk=session.user.pk).avatar
    assert os.path.exists(media_root / first)
    put_avatar(session.api, image_bytes(fmt="WEBP"), content_type="image/webp")
    second = in_tenant(org_a, User.objects.get, pk=session.user.pk).avatar
    assert second != first and not os.path.exists(media_root / first)
    assert session.api.delete("/api/v1/me/avatar").status_code == 204
    assert not os.path.exists(media_root / second)
    assert session.api.get(f"/api/v1/users/{session.user.pk}/avatar").status_code == 404


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "invalid_image"),
        (b"%PDF-1.4 not an image", 400, "invalid_image"),
        (image_bytes(fmt="JPEG")[:200], 400, "invalid_image"),
        (png_bomb(60000, 60000), 400, "image_too_large"),
        (b"\x00" * (2 * 1024 * 1024 + 1), 413, "image_too_large"),
    ],
    ids=["empty", "not-an-image", "truncated", "decompression-bomb", "too-many-bytes"],
)
def test_hostile_avatars_are_refused_and_leave_nothing(org_a, new_session, data, status, code):
    session = new_session(org_a)
    response = put_avatar(session.api, data)
    assert response.status_code == status, response.text
    if status != 413 or response.headers.get("content-type", "").startswith("application/json"):
        assert response.json()["error"]["code"] in (code, "request_too_large")
    assert in_tenant(org_a, User.objects.get, pk=session.user.pk).avatar == ""


def test_a_guest_sees_only_the_avatars_of_their_contacts(org_a, new_session):
    guest = new_session(org_a, role="guest")
    contact = new_session(org_a)
    stranger = new_session(org_a)
    for person in (contact, stranger):
        assert put_avatar(person.api, image_bytes()).status_code == 200
    started = contact.api.post(
        "/api/v1/conversations", json={"kind": "direct", "members": [str(guest.user.pk)]}
    )
    assert started.status_code in (200, 201), started.text
    assert guest.api.get(f"/api/v1/users/{contact.user.pk}/avatar").status_code == 200
    hidden = guest.api.get(f"/api/v1/users/{stranger.user.pk}/avatar")
    unknown = guest.api.get(f"/api/v1/users/{User().pk}/avatar")
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json()


def test_another_orgs_avatar_is_not_found(org_a, org_b, new_session):
    owner = new_session(org_a)
    assert put_avatar(owner.api, image_bytes()).status_code == 200
    outsider = new_session(org_b)
    assert outsider.api.get(f"/api/v1/users/{owner.user.pk}/avatar").status_code == 404


def test_an_admin_sets_and_removes_a_members_avatar(org_a, new_session):
    admin = new_session(org_a, role="admin")
    member = make_user(org_a)
    path = f"/api/v1/users/{member.pk}/profile/avatar"
    assert put_avatar(admin.api, image_bytes(), path=path).status_code == 200
    assert in_tenant(org_a, User.objects.get, pk=member.pk).avatar
    assert admin.api.delete(path).status_code == 204
    plain = new_session(org_a)
    assert put_avatar(plain.api, image_bytes(), path=path).status_code == 403


# --- directory ---------------------------------------------------------------------------


def test_the_directory_searches_names_and_titles_and_pages(org_a, new_session):
    viewer = new_session(org_a)
    tag = unique("dir")
    people = [make_user(org_a, f"{tag}-{i}") for i in range(5)]
    in_tenant(org_a, User.objects.filter(pk=people[0].pk).update, title=f"Chief {tag}")
    in_tenant(org_a, User.objects.filter(pk=people[4].pk).update, is_active=False)
    first = viewer.api.get("/api/v1/directory", params={"q": tag, "limit": 2}).json()
    assert [u["username"] for u in first["users"]] == [f"{tag}-0", f"{tag}-1"]
    assert "email" not in first["users"][0]
    rest = viewer.api.get(
        "/api/v1/directory", params={"q": tag, "limit": 2, "after": first["next_after"]}
    ).json()
    assert [u["username"] for u in rest["users"]] == [f"{tag}-2", f"{tag}-3"]
    assert rest["next_after"] is None  # the deactivated fifth is not listed
    by_title = viewer.api.get("/api/v1/directory", params={"q": f"chief {tag}"}).json()
    assert [u["username"] for u in by_title["users"]] == [f"{tag}-0"]


def test_a_guest_finds_only_themselves_and_their_contacts(org_a, new_session):
    tag = unique("g")
    guest = new_session(org_a, make_user(org_a, f"{tag}-guest", role="guest"))
    contact = new_session(org_a, make_user(org_a, f"{tag}-contact"))
    make_user(org_a, f"{tag}-stranger")
    contact.api.post(
        "/api/v1/conversations", json={"kind": "direct", "members": [str(guest.user.pk)]}
    )
    found = guest.api.get("/api/v1/directory", params={"q": tag}).json()
    assert sorted(u["username"] for u in found["users"]) == [f"{tag}-contact", f"{tag}-guest"]


def test_the_directory_never_shows_another_org(org_a, org_b, new_session):
    tag = unique("x")
    make_user(org_b, f"{tag}-b")
    viewer = new_session(org_a)
    assert viewer.api.get("/api/v1/directory", params={"q": tag}).json()["users"] == []


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"q": "x" * 201}]
)
def test_directory_bad_parameters_are_400(org_a, new_session, params):
    viewer = new_session(org_a)
    assert viewer.api.get("/api/v1/directory", params=params).status_code == 400


def test_the_directory_needs_authentication(org_a, api_for):
    assert api_for(org_a).get("/api/v1/directory").status_code == 401
