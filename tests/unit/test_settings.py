from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv(f"{ENV_PREFIX}PORT", "9001")
    monkeypatch.setenv(f"{ENV_PREFIX}STOP_STRINGS", '["::::", "\\n\\n"]')
    settings = Settings(_cli_parse_args=["--no-merge", "--adapter", "some/lora", "--max-running", "3"])
    assert (settings.port, settings.merge, settings.adapter, settings.max_running) == (9001, False, "some/lora", 3)
    assert settings.stop_strings == ["::::", "\n\n"]


def test_flag_wins_over_environment(monkeypatch):
    monkeypatch.setenv(f"{ENV_PREFIX}PORT", "9001")
    assert Settings(_cli_parse_args=["--port", "9002"]).port == 9002


def test_defaults_stop_at_the_label_mark():
    settings = Settings(_cli_parse_args=[])
    assert settings.stop_strings == ["::::"]
    assert (settings.host, settings.port, settings.merge) == ("127.0.0.1", 8000, True)


def test_empty_stop_string_is_refused():
    with pytest.raises(ValidationError):
        Settings(stop_strings=[""])


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_readme_documents_every_setting(name):
    table_rows = [line for line in README.read_text().splitlines() if line.startswith("| `--")]
    flag, env = f"`--{name.replace('_', '-')}`", f"`{ENV_PREFIX}{name.upper()}`"
    assert any(flag in row and env in row for row in table_rows)
