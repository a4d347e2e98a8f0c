"""What can be checked of the Docker image and compose file without a Docker engine: the Dockerfile lints
clean, sets only real settings, runs as a non-root user with the README's entry command and a healthcheck on a
route that exists; the compose file reserves a GPU and keeps the caches on a volume."""

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from server.app import create_app
from server.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# Variables the image sets for other programs than ours.
FOREIGN_ENV = {"PATH", "HF_HOME", "DEBIAN_FRONTEND", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "HF_TOKEN"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (name, _) in enumerate(parsed) if name == "FROM")
    return parsed[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in instructions():
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_the_image_sets_is_a_real_setting_with_a_valid_value(monkeypatch):
    env = image_env()
    ours = {name: value for name, value in env.items() if name.startswith(ENV_PREFIX)}
    assert set(env) - set(ours) <= FOREIGN_ENV
    for name, value in ours.items():
        assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, name
        monkeypatch.setenv(name, value)
    settings = Settings(_cli_parse_args=[])
    assert (settings.device, settings.dtype, settings.merge, settings.port) == ("cuda", "bfloat16", True, 8000)
    assert settings.adapter == "lemonilia/Llama-3.1-Herrsimian-8B"


def test_caches_live_on_the_volume_and_the_user_is_not_root():
    env, final = image_env(), dict(instructions())
    assert final["VOLUME"] == "/data"
    assert env["HF_HOME"].startswith("/data/") and env["RPSERVE_CACHE_DIR"].startswith("/data/")
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0


def test_healthcheck_reaches_a_route_that_exists():
    healthcheck = dict(instructions())["HEALTHCHECK"]
    path = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", healthcheck)
    assert path and int(path.group(1)) == int(image_env()["RPSERVE_PORT"])
    assert path.group(2) in create_app(Settings(_cli_parse_args=[])).openapi()["paths"]


def test_the_entry_command_is_the_one_the_readme_and_manage_start():
    entrypoint = yaml.safe_load(dict(instructions())["ENTRYPOINT"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["rpserve"] and scripts["rpserve"] == "server.cli:main"
    assert 'exec "$VENV/bin/rpserve"' in (ROOT / "manage").read_text()
    assert "docker run" in (ROOT / "README.md").read_text()


def test_every_package_is_copied_into_the_image():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    copied = (DOCKER / "Dockerfile").read_text()
    for package in packages["packages"]:
        assert f"COPY {package} " in copied


def test_compose_reserves_a_gpu_publishes_the_port_and_keeps_the_volume():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["rpserve"]
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(port.endswith(":8000") for port in service["ports"])
    assert any(volume.endswith(":/data") for volume in service["volumes"])
    assert service["env_file"] == [".env"]
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > Settings.model_fields["shutdown_timeout"].default


@pytest.mark.parametrize("line", [line for line in (DOCKER / ".env.example").read_text().splitlines() if "=" in line])
def test_env_example_names_real_settings(line, monkeypatch):
    name, value = line.split("=", 1)
    if name in FOREIGN_ENV:
        return
    assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, name
    if value:
        monkeypatch.setenv(name, value)
        Settings(_cli_parse_args=[])
