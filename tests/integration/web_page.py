"""Driving the built-in page in a real Chromium (Debian's `chromium`, through Playwright): what the page's test
modules share. The `browser`, `page` and `page_server` fixtures are in conftest.py."""

import base64
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from tests.integration.server_process import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "web"

NEEDS_CHROMIUM = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)
expect = pytest.importorskip("playwright.sync_api").expect


def open_page(page, url: str) -> None:
    """Opens the page and waits until it has loaded its scenes (from IndexedDB, after the load event)."""
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready]", state="attached")


def reload(page) -> None:
    """Reloads once every change is written (the page marks writes on their way with `data-unsaved`)."""
    page.wait_for_selector("body:not([data-unsaved])", state="attached")
    page.reload()
    page.wait_for_selector("body[data-ready]", state="attached")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def add_character(page, name: str, description: str, side: str) -> None:
    page.click("#add-character")
    member = page.locator("#cast li").last
    member.locator("input").fill(name)
    member.locator("textarea").fill(description)
    member.locator("select").select_option(side)


def write(page, writer: str, text: str) -> None:
    page.select_option("#writer", writer)
    page.fill("#input", text)
    page.press("#input", "Enter")


def turns(page) -> list[tuple[str, str]]:
    return [(t.locator(".who").inner_text(), t.locator(".text").inner_text()) for t in page.locator(".turn").all()]


def wait_idle(page) -> None:
    """Until the page has no generation running (its Stop button is off again)."""
    page.wait_for_function("document.getElementById('stop').disabled", timeout=0)


def generate_as(page, speaker: str) -> None:
    page.select_option("#speaker", speaker)
    page.click("#generate")
    wait_idle(page)


def png_with_chara(card: dict, keyword: bytes = b"chara") -> bytes:
    """A 1x1 PNG carrying `card` in a `chara` (V2) or `ccv3` (V3) tEXt chunk, as SillyTavern writes cards."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    text = keyword + b"\x00" + base64.b64encode(json.dumps(card).encode())
    pixels = zlib.compress(b"\x00\x00\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", text)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
