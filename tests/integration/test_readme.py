"""The README's curl examples, run as written against the real server (only the address changes)."""

import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if block.lstrip().startswith(("curl", "#")) and "curl " in block]


def test_the_readme_has_curl_examples():
    assert len(curl_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("block", curl_blocks(), ids=lambda block: block.split("\n")[0][:40])
def test_curl_example(server, block):
    script = "set -euo pipefail\n" + block.replace("http://127.0.0.1:8000", server.url).replace(
        "curl ", "curl --fail-with-body -sS "
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"error"' not in result.stdout
    assert any(marker in result.stdout for marker in ('"text_completion"', '"chat.completion"', "data: [DONE]"))
