"""`make run` on a fresh Debian machine (issue 15, item 15).

Debian's PostgreSQL clusters (what `apt-get install postgresql` makes, and pg_createcluster)
authenticate TCP connections with scram-sha-256 and the postgres role has no password, so
the default DATABASE_URL (no password) could not connect and set-up stopped. These tests
make such a cluster on a spare port with Debian's own pg_createcluster (left stopped, as
after an install without systemd), run scripts/ensure_services.sh against it with a
DATABASE_URL without a password, then the first step of scripts/run.sh (migrate), and drop
the cluster at the end. The machine's own cluster is never touched.

And scripts/ensure_venv.sh on a Debian Python without ensurepip (python3-venv missing): a
Python that fails `-m venv` with Debian's own message stands in for it, and a stand-in
apt-get records what is installed (the real apt-get would install the real package; this
covers the detection, the package named and the retry, not Debian's package itself).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.fixtures import _free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ensure_services.sh"


def _pg_version() -> str | None:
    versions = sorted(
        (p.name for p in Path("/usr/lib/postgresql").glob("*") if (p / "bin/initdb").exists()),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    return versions[-1] if versions else None


needs_debian_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("pg_createcluster") is None or _pg_version() is None,
    reason="needs root and Debian's postgresql-common (pg_createcluster)",
)


class DebianCluster:
    """A cluster made by pg_createcluster with Debian's defaults (peer locally,
    scram-sha-256 over TCP), on a spare port, dropped by drop()."""

    def __init__(self):
        self.version = _pg_version()
        self.port = _free_port()
        self.name = f"siphera{self.port}"
        subprocess.run(
            ["pg_createcluster", self.version, self.name, "-p", str(self.port)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        hba = Path(f"/etc/postgresql/{self.version}/{self.name}/pg_hba.conf").read_text()
        assert "scram-sha-256" in hba and "trust" not in hba.split("\n# TYPE", 1)[-1]
        self.hba = hba

    def psql_as_postgres(self, sql: str) -> str:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-X", "-qtA", "-p", str(self.port)],
            input=sql,
            cwd="/",
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def drop(self) -> None:
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, self.name], capture_output=True, timeout=120
        )


@pytest.fixture
def debian_cluster():
    cluster = DebianCluster()
    try:
        yield cluster
    finally:
        cluster.drop()


@pytest.fixture
def var_dir():
    path = Path(tempfile.mkdtemp(prefix="siphera-fresh-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script_env(var_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        SIPHERA_VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="siphera.settings",
    )
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


def ensure_services(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@needs_debian_root
def test_make_run_set_up_works_against_a_fresh_debian_cluster_with_no_password_in_the_url(
    debian_cluster, var_dir
):
    url = f"postgres://postgres@127.0.0.1:{debian_cluster.port}/fresh_check"
    env = script_env(var_dir, url)
    # Given a cluster that refuses a connection without a password over TCP
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)

    # When the set-up of `make run` runs against it
    result = ensure_services(env)

    # Then it started the cluster, gave the role a password kept in var/pgpass, made the db
    assert result.returncode == 0, result.stderr
    assert f"Starting the Debian PostgreSQL cluster {debian_cluster.version}/" in result.stderr
    assert "Gave role postgres a generated password (it had none)" in result.stderr
    assert "Creating database fresh_check" in result.stderr
    pgpass = var_dir / "pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    password = pgpass.read_text().splitlines()[0].rsplit(":", 1)[1]
    assert password not in result.stderr
    with psycopg.connect(url, connect_timeout=5, password=password) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("fresh_check",)
    # And pg_hba.conf is as Debian made it
    hba = Path(
        f"/etc/postgresql/{debian_cluster.version}/{debian_cluster.name}/pg_hba.conf"
    ).read_text()
    assert hba == debian_cluster.hba

    # When run.sh's next step runs with the same environment (no password anywhere in it)
    migrate = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", "migrate_schemas", "--shared", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Then the project's processes find the password (settings point PGPASSFILE at var/pgpass)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    with psycopg.connect(url, connect_timeout=5, password=password) as conn:
        assert conn.execute("SELECT to_regclass('public.orgs_org')").fetchone()[0]

    # And a second run changes nothing
    again = ensure_services(env)
    assert again.returncode == 0, again.stderr
    assert "PostgreSQL answers" in again.stderr
    assert "Database fresh_check exists" in again.stderr
    assert "password" not in again.stderr
    assert pgpass.read_text().splitlines()[0].rsplit(":", 1)[1] == password


@needs_debian_root
def test_a_role_the_url_names_that_does_not_exist_is_created_with_a_password(
    debian_cluster, var_dir
):
    url = f"postgres://siphera@127.0.0.1:{debian_cluster.port}/siphera_fresh"

    result = ensure_services(script_env(var_dir, url))

    assert result.returncode == 0, result.stderr
    assert "Created role siphera (LOGIN CREATEDB) with a generated password" in result.stderr
    owner = debian_cluster.psql_as_postgres(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'siphera_fresh'"
    )
    assert owner == "siphera"
    flags = debian_cluster.psql_as_postgres(
        "SELECT rolsuper, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = 'siphera'"
    )
    assert flags == "f|t|t"


@needs_debian_root
def test_a_role_with_a_password_of_its_own_is_left_alone_and_the_script_says_what_to_do(
    debian_cluster, var_dir
):
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", debian_cluster.version, debian_cluster.name]
        + ["start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    debian_cluster.psql_as_postgres("ALTER ROLE postgres PASSWORD 'their-own-password'")
    url = f"postgres://postgres@127.0.0.1:{debian_cluster.port}/fresh_check"

    result = ensure_services(script_env(var_dir, url))

    assert result.returncode != 0
    assert "Role postgres has a password of its own" in result.stderr
    assert "put it in DATABASE_URL" in result.stderr
    assert not (var_dir / "pgpass").exists()
    with psycopg.connect(
        url.replace("/fresh_check", "/postgres"), connect_timeout=5, password="their-own-password"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- python3-venv ---------------------------------------------------------------------------

DEBIAN_NO_ENSUREPIP = (
    "The virtual environment was not created successfully because ensurepip is not\n"
)
DEBIAN_NO_ENSUREPIP += """available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.
"""


def test_ensure_venv_installs_the_venv_package_debian_names_when_ensurepip_is_missing(tmp_path):
    # Given a checkout (the scripts, empty requirements) and a Python whose `-m venv` fails
    # as Debian's does until python3.11-venv is installed
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("lib.sh", "ensure_venv.sh"):
        shutil.copy(ROOT / "scripts" / name, checkout / "scripts" / name)
    (checkout / "requirements.txt").write_text("")
    (checkout / "requirements-dev.txt").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    installed = tmp_path / "installed"
    apt_log = tmp_path / "apt.log"
    real_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
    (bin_dir / "python3.11").write_text(
        "#!/bin/bash\n"
        f'if [[ "$1 $2" == "-m venv" && ! -e {installed} ]]; then\n'
        f"  cat >&2 <<'EOF'\n{DEBIAN_NO_ENSUREPIP}EOF\n"
        "  exit 1\n"
        "fi\n"
        f'exec {real_python} "$@"\n'
    )
    (bin_dir / "apt-get").write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {apt_log}\n'
        f'[[ " $* " == *" install "* ]] && touch {installed}\n'
        "exit 0\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": str(bin_dir / "python3.11"),
        "PIP_NO_INDEX": "1",
    }

    # When the script runs
    result = subprocess.run(
        ["bash", str(checkout / "scripts" / "ensure_venv.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )

    # Then it said what was missing, installed the package Python named, and made the venv
    assert result.returncode == 0, result.stderr
    assert "has no ensurepip (Debian's python3.11-venv is missing)" in result.stderr
    calls = apt_log.read_text().splitlines()
    assert any(
        call.endswith("install -y -qq --no-install-recommends python3.11-venv") for call in calls
    ), calls
    assert (checkout / ".venv" / "bin" / "python").exists()
