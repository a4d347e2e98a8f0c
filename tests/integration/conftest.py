from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from server.engine.model.default_model import embedded_model_folder
from server.settings import Settings
from tests.integration.server_process import KEYED, ServerProcess


@pytest.fixture(scope="session")
def model_folder() -> Path:
    return embedded_model_folder(Settings().cache_dir)


@pytest.fixture(scope="session")
def adapter_folder(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the embedded model with small random (non-zero) weights, saved the way peft saves."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.1)
    folder = tmp_path_factory.mktemp("adapter")
    adapted.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shared_server() -> Iterator[Callable[..., ServerProcess]]:
    """A running server per flag set for the whole session: every module that asks for the same flags shares one
    (starting a server is most of what an integration test costs). A test that stops or kills its server starts
    its own instead."""
    started: dict[tuple, ServerProcess] = {}

    def server_with(*args: str, module: str = "server", dtype: str = "float32") -> ServerProcess:
        key = (args, module, dtype)
        if key not in started or started[key].process.poll() is not None:
            started[key] = ServerProcess(*args, module=module, dtype=dtype).wait_ready()
        return started[key]

    yield server_with
    for process in started.values():
        process.stop()


@pytest.fixture(scope="session")
def server(shared_server: Callable[..., ServerProcess], adapter_folder: Path) -> ServerProcess:
    """The session's default server: the embedded model with a LoRA adapter, merged."""
    return shared_server("--adapter", str(adapter_folder))


@pytest.fixture(scope="session")
def keyed_server(shared_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server that needs the API key and lets FRONTEND's pages call it."""
    return shared_server(*KEYED)


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def page_server(server: ServerProcess) -> ServerProcess:
    """The server the built-in page is tested against."""
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's chromium through Playwright (which never downloads a browser here)."""
    from tests.integration.web_page import CHROMIUM

    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser, page_server: ServerProcess) -> Iterator:
    """The page at desktop size, opened and loaded; no script error may happen in it."""
    from tests.integration.web_page import open_page

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_page(page, page_server.url)
    yield page
    context.close()
    assert not errors, errors
