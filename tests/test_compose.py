"""Static checks of compose.yaml, the Dockerfile and .dockerignore. No container is started."""

import json
import shlex
import tomllib
from pathlib import Path

import check_jsonschema
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("worker", "beat", "flower")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    """A validator for the Compose specification schema that check-jsonschema ships."""
    package = Path(check_jsonschema.__file__).parent
    paths = sorted(package.rglob("compose-spec.json"))
    assert paths, f"no compose-spec.json under {package}; check-jsonschema may have moved its vendored schemas"
    schema = json.loads(paths[0].read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def command_words(service: dict) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(command)
    return list(command)


def celery_app(words: list[str]) -> str | None:
    """Return the value of Celery's -A/--app option in a command, or None when it is absent."""
    for index, word in enumerate(words):
        if word in ("-A", "--app"):
            return words[index + 1] if index + 1 < len(words) else None
        if word.startswith("--app="):
            return word.removeprefix("--app=")
        if word.startswith("-A") and len(word) > 2:
            return word[2:]
    return None


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


# Schema


def test_compose_matches_spec_schema(compose, compose_validator):
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in compose_validator.iter_errors(compose)]
    assert errors == []


def test_schema_rejects_unknown_service_key(compose_validator):
    broken = {"services": {"redis": {"image": "redis:8", "publish": ["6379"]}}}
    assert not compose_validator.is_valid(broken)


def test_compose_services_present(compose):
    assert set(compose["services"]) == {"redis", *APP_SERVICES}


# Celery services


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_celery_tasks(compose, name):
    words = command_words(compose["services"][name])
    assert words[0] == "celery"
    assert celery_app(words) == "tasks"
    assert words[3] == name


@pytest.mark.parametrize(
    ("words", "app"),
    [
        (["celery", "-A", "tasks", "worker"], "tasks"),
        (["celery", "-Atasks", "worker"], "tasks"),
        (["celery", "--app", "tasks", "worker"], "tasks"),
        (["celery", "--app=other", "worker"], "other"),
        (["celery", "worker"], None),
        (["celery", "-A"], None),
    ],
)
def test_celery_app_option_read(words, app):
    assert celery_app(words) == app


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_environment(compose, name):
    environment = compose["services"][name]["environment"]
    redis_url = environment["RISK_REDIS_URL"]
    broker_url = environment["RISK_BROKER_URL"]
    assert redis_url == "redis://:${RISK_REDIS_PASSWORD:?set RISK_REDIS_PASSWORD}@redis:6379/0"
    assert broker_url == "redis://:${RISK_REDIS_PASSWORD:?set RISK_REDIS_PASSWORD}@redis:6379/1"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_redis(compose, name):
    service = compose["services"][name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["build"] == "."


def test_worker_is_scalable(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "replicas" not in worker.get("deploy", {})
    assert "ports" not in worker


def test_worker_sends_task_events(compose):
    assert "--events" in command_words(compose["services"]["worker"])


def test_worker_healthcheck_pings_own_node(compose):
    text = healthcheck_text(compose["services"]["worker"])
    assert "celery -A tasks inspect ping" in text
    assert "-d celery@$$HOSTNAME" in text


def test_beat_runs_once(compose):
    beat = compose["services"]["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) <= 1
    assert beat.get("scale", 1) <= 1
    words = command_words(beat)
    assert words[words.index("--schedule") + 1] == "/tmp/celerybeat-schedule"


def test_flower_basic_auth_from_settings(compose):
    flower = compose["services"]["flower"]
    basic_auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    user, password = basic_auth.split("}:", 1)
    assert "RISK_FLOWER_USER" in user
    assert "RISK_FLOWER_PASSWORD:?" in password
    words = command_words(flower)
    assert "--address=0.0.0.0" in words
    assert "--port=5555" in words


# Ports


def published_ports(service: dict) -> list[dict]:
    """Return a service's published ports in the long syntax: host_ip, published, target."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(port)
            continue
        parts = str(port).rsplit(":", 2)
        if len(parts) == 3:
            ports.append({"host_ip": parts[0], "published": parts[1], "target": parts[2]})
        elif len(parts) == 2:
            ports.append({"host_ip": None, "published": parts[0], "target": parts[1]})
        else:
            ports.append({"host_ip": None, "published": None, "target": parts[0]})
    return ports


def test_only_flower_publishes_ports(compose):
    publishing = sorted(name for name, service in compose["services"].items() if service.get("ports"))
    assert publishing == ["flower"]
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name


def test_flower_port_bound_to_loopback(compose):
    ports = published_ports(compose["services"]["flower"])
    assert ports == [{"host_ip": "127.0.0.1", "published": "5555", "target": "5555"}]


def test_published_ports_parsed():
    service = {"ports": ["127.0.0.1:5555:5555", "8080:80", "9000", {"target": 1, "host_ip": "0.0.0.0"}]}
    host_ips = [port["host_ip"] for port in published_ports(service)]
    assert host_ips == ["127.0.0.1", None, None, "0.0.0.0"]


# Redis


def test_redis_image_and_persistence(compose):
    redis = compose["services"]["redis"]
    words = command_words(redis)
    assert redis["image"] == "redis:8"
    assert words[0] == "redis-server"
    assert "--appendonly yes" in " ".join(words)
    assert words[words.index("--requirepass") + 1] == "${RISK_REDIS_PASSWORD:?set RISK_REDIS_PASSWORD}"


def test_redis_healthcheck_authenticated(compose):
    redis = compose["services"]["redis"]
    text = healthcheck_text(redis)
    assert "redis-cli ping" in text
    assert redis["environment"]["REDISCLI_AUTH"] == "${RISK_REDIS_PASSWORD:?set RISK_REDIS_PASSWORD}"


def test_redis_data_in_named_volume(compose):
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert "expose" not in redis
    volume_names = [mount.split(":", 1)[0] for mount in redis["volumes"] if mount.endswith(":/data")]
    assert volume_names == ["redis-data"]
    assert "redis-data" in compose["volumes"]


# Dockerfile and .dockerignore


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (instruction, arguments) pairs of the Dockerfile, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = text.replace("\\\n", " ")
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def test_dockerfile_installs_project():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any("pip install ." in arguments for arguments in runs)


def test_dockerfile_copies_build_inputs():
    copied = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            copied.update(arguments.split()[:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert {"pyproject.toml", project["readme"], "scoring", "tasks"} <= copied


def test_dockerfile_copy_sources_exist():
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing from the repository"


def test_dockerfile_runs_without_root():
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0")


def test_dockerignore_sends_only_build_inputs():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    for included in ("!pyproject.toml", "!README.md", "!scoring/", "!tasks/"):
        assert included in patterns
    assert "**/__pycache__" in patterns
