"""docker-compose.yml holds together (issue 15, item 18).

`make test` installs a Compose client (scripts/ensure_compose.sh: Docker's v2 plugin when
present, else Debian's docker-compose 1.29) and this test runs `config -q` on the file, which
parses, validates and interpolates it without a Docker engine: the file stays valid for both
versions (1.29 refuses the Compose Specification's top-level `name`). The test also reads the
file: every image pulled from a registry is pinned to a release (never `latest`), and what the
services refer to (other services, volumes, the shared block) exists. That the pinned tags
exist on their registries cannot be checked from here (no registry but PyPI, Debian and npm
is reachable): the comments in the file say where each was taken from."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
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


def compose_command() -> list[str]:
    """The Compose client scripts/ensure_compose.sh made sure of."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("no Compose client: run scripts/ensure_compose.sh (make test does)")
    return [legacy]


def compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess:
    """`config -q` on the repository's file, with `env_file` as the operator's .env (the
    project directory is a scratch one, so no real .env of the checkout is read)."""
    (tmp_path / ".env").write_text(env_file)
    return subprocess.run(
        [
            *compose_command(),
            *("--project-directory", str(tmp_path), "-f", str(ROOT / "docker-compose.yml")),
            *("config", "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def test_compose_config_accepts_the_file_with_the_documented_env(tmp_path):
    result = compose_config(tmp_path, "SECRET_KEY=0123456789abcdef\nPOSTGRES_PASSWORD=pw\n")

    assert result.returncode == 0, result.stderr


def test_compose_config_refuses_to_run_without_a_secret_key_and_says_so(tmp_path):
    result = compose_config(tmp_path, "POSTGRES_PASSWORD=pw\n")

    assert result.returncode != 0
    assert "set SECRET_KEY in .env" in result.stderr


def test_pulled_images_name_a_version_not_a_moving_name():
    for name, service in compose()["services"].items():
        if "build" in service:
            continue
        tag = service["image"].rpartition(":")[2]
        # A release (4.6.2, v1.8.4, RELEASE.<date>) or an official image's major version (15).
        assert re.fullmatch(r"v?\d+(\.\d+)*|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), (
            f"{name}: {service['image']} is not pinned to a version"
        )
