"""docker-compose.yml holds together (issue 15, item 18, as far as this machine allows).

The real check is `docker compose config`, which needs Docker's Compose v2 plugin: it is
not in Debian's archive and Docker's own repository is out of reach here, and Debian's
docker-compose 1.29 refuses the Compose Specification's top-level `name`. So this test
reads the file itself: every image pulled from a registry is pinned to a release (never
`latest`), and what the services refer to (other services, volumes, the shared block)
exists."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_pulled_image_is_pinned_to_a_release():
    for name, service in compose()["services"].items():
        if "build" in service:
            continue  # built from this repository's Dockerfile
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} names no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"


def test_services_refer_only_to_what_the_file_defines():
    document = compose()
    services = document["services"]
    volumes = set(document.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for other in depends if isinstance(depends, (list, dict)) else ():
            assert other in services, f"{name} depends on unknown service {other}"
        for mount in service.get("volumes") or ():
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source")
            if source and not source.startswith((".", "/", "$")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
    assert services["web"]["build"], "web is built from the Dockerfile"
