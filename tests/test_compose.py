"""docker-compose.yml, read (no Docker engine here): the services, their `mefts` commands, the GPU reservations, the
ray profile, PostgreSQL on a named volume, and DATABASE_URL pointing at it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from backend.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^${}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (innermost first), on strings, lists and dicts."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if "?" in op:
            raise KeyError(f"{name}: {arg}")
        return arg

    while True:
        new = VARIABLE.sub(one, value)
        if new == value:
            return new
        value = new


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return interpolate(compose["services"], {"MEFTS_API_TOKEN": "secret"})


def test_services_profiles_and_the_image(compose, services):
    assert {"api", "worker", "postgres", "ray-head", "ray-worker", "ray-dispatcher"} <= set(services)
    for name in ("api", "worker", "postgres"):
        assert "profiles" not in services[name], name  # `docker compose up` starts them
    for name in ("ray-head", "ray-worker", "ray-dispatcher"):
        assert services[name]["profiles"] == ["ray"], name
    mefts = {n for n, s in services.items() if "build" in s}
    assert mefts == set(services) - {"postgres"}
    assert {services[n]["build"] for n in mefts} == {"."} and (REPO / "Dockerfile").exists()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -e '.[cluster]'" in dockerfile and "FROM python:3.11" in dockerfile


def test_every_command_is_a_mefts_command_the_cli_accepts(services):
    parser = build_parser()
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running on a cluster"):]
    for name, svc in services.items():
        if name == "postgres":
            assert "command" not in svc  # the image's own
            continue
        cmd = svc["command"]
        assert isinstance(cmd, list) and cmd[0] == "mefts", (name, cmd)
        args = parser.parse_args(cmd[1:])  # exits (fails the test) on anything the CLI does not know
        assert f"mefts {cmd[1]}" in section, f"{name}: `mefts {cmd[1]}` is not in the README's cluster section"
        if cmd[1] == "worker":
            assert not args.burst
    api = parser.parse_args(services["api"]["command"][1:])
    assert (api.command, api.host, api.no_worker) == ("serve", "0.0.0.0", True)
    head = parser.parse_args(services["ray-head"]["command"][1:])
    node = parser.parse_args(services["ray-worker"]["command"][1:])
    assert head.head and node.address == f"ray-head:{head.port}"


def test_gpu_reservations(services):
    for name in ("worker", "ray-worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and (d.get("count") or d.get("device_ids"))
                   for d in devices), name
    assert "deploy" not in services["api"]


def test_postgres_on_a_named_volume_and_every_database_url_points_at_it(compose, services):
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    (mount,) = pg["volumes"]
    volume, target = mount.split(":")[:2]
    assert volume in compose["volumes"] and target == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    env = pg["environment"]
    for name, svc in services.items():
        if name == "postgres":
            continue
        url = make_url(svc["environment"]["DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg" and url.host == "postgres", name
        assert (url.username, url.password, url.database) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"],
                                                              env["POSTGRES_DB"]), name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    ray = services["ray-dispatcher"]["environment"]
    assert ray["EXECUTOR"] == "ray" and make_url(ray["RAY_ADDRESS"].replace("ray://", "x://")).host == "ray-head"
    assert services["ray-worker"]["environment"]["RAY_AUTH_TOKEN"] == ray["RAY_AUTH_TOKEN"] == "secret"


def test_the_api_needs_its_token(compose):
    with pytest.raises(KeyError, match="MEFTS_API_TOKEN"):
        interpolate(compose["services"]["api"], {})
