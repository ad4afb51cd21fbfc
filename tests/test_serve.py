"""``zoo.serve``: the gradio demo page of an export, driven in a real headless browser (playwright + the system's
Chromium). What the page shows must be what ``zoo.pipeline`` returns for the same export, image and text when called
directly from Python; bad inputs must come back as an error message on the page. Skipped when gradio, playwright or
a ``chromium`` executable is missing."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch
from PIL import Image, ImageDraw

import zoo

WAIT_MS = 30_000


def _scene(colour=(200, 30, 30), size=64) -> Image.Image:
    img = Image.new("RGB", (size, size), (250, 250, 250))
    ImageDraw.Draw(img).ellipse([10, 12, 40, 42], fill=colour)
    return img


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _launched(app):
    """``app`` served on 127.0.0.1 from a background thread; yields its URL, closes it at the end."""
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
               ssr_mode=False, share=False)
    try:
        yield app.local_url
    finally:
        app.close(verbose=False)


def _screenshot(page, path, capsys) -> None:
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n[test_serve] screenshot: {path}")


# -- without a browser ----------------------------------------------------------------------------------------------


def test_importing_zoo_does_not_import_gradio():
    code = "import sys, zoo, zoo.serve; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_gradio_names_the_demo_extra(monkeypatch):
    from zoo.serve import build_app

    monkeypatch.setitem(sys.modules, "gradio", None)  # what an environment without gradio gives on import
    with pytest.raises(ImportError, match=r"pip install 'mmzoo\[demo\]'"):
        build_app("demo-tiny")


# -- the exports the browser tests serve ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gradio():
    try:
        import gradio
    except ImportError as exc:  # absent, or installed but not importable
        pytest.skip(f"gradio cannot be imported ({exc}): pip install 'mmzoo[demo]'")
    return gradio


@pytest.fixture(scope="module")
def page(gradio):
    """A page of a headless Chromium (the system's executable, never a downloaded browser build)."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        pytest.skip(f"playwright cannot be imported ({exc}): it is in the dev extra")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, demo):
    """A VQA export (demo-tiny, conftest's seeded model: a classifier head, no task → the vqa page), a captioning
    export (x2vlm-tiny) and a PNG scene."""
    root = tmp_path_factory.mktemp("serve")
    demo.save_pretrained(root / "vqa")
    torch.manual_seed(0)
    zoo.create_model("x2vlm-tiny", task="captioning").eval().save_pretrained(root / "captioning")
    _scene().save(root / "scene.png")
    return root


def _upload(page, path, elem_id: str = "image") -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id} img").first.wait_for(state="visible")


def _expect_error(page, text: str) -> None:
    page.get_by_text(text).first.wait_for(state="visible")


# -- in the browser -------------------------------------------------------------------------------------------------


def test_vqa_page_shows_the_pipelines_answer(page, files, tmp_path, capsys):
    from playwright.sync_api import expect

    from zoo.serve import build_app

    app = build_app(files / "vqa")
    assert app.zoo_task == "vqa"  # demo-tiny carries no task: the first one it supports with a page
    question = "what colour is the circle?"
    # the same model through its own pipeline, called directly: independent of the page
    want = zoo.pipeline("vqa", app.zoo_pipeline.model)(str(files / "scene.png"), question)
    with _launched(app) as url:
        page.goto(url)
        page.locator("#question textarea").fill(question)
        page.locator("#submit").click()  # no image yet: an error message on the page, no traceback
        _expect_error(page, "upload an image first")
        _upload(page, files / "scene.png")
        page.locator("#submit").click()
        answer = page.locator("#answer textarea")
        expect(answer).not_to_have_value("", timeout=WAIT_MS)
        assert answer.input_value() == want["answer"]
        expect(page.locator("#prob input")).not_to_have_value("", timeout=WAIT_MS)
        assert float(page.locator("#prob input").input_value()) == pytest.approx(want["prob"], abs=1e-3)
        assert "Traceback" not in page.content()
        _screenshot(page, tmp_path / "vqa.png", capsys)


def test_captioning_page_shows_the_pipelines_caption(page, files, tmp_path, capsys):
    from playwright.sync_api import expect

    from zoo.serve import build_app

    app = build_app(str(files / "captioning"))
    assert app.zoo_task == "captioning"  # the export's own task
    want = zoo.pipeline("captioning", app.zoo_pipeline.model)(str(files / "scene.png"))["caption"]
    assert want.strip()
    with _launched(app) as url:
        page.goto(url)
        _upload(page, files / "scene.png")
        page.locator("#submit").click()
        caption = page.locator("#caption textarea")
        expect(caption).not_to_have_value("", timeout=WAIT_MS)
        assert caption.input_value() == want
        _screenshot(page, tmp_path / "captioning.png", capsys)


def test_retrieval_page_ranks_like_the_pipeline_and_reports_the_models_errors(page, files, tmp_path, capsys):
    from zoo.serve import build_app

    torch.manual_seed(1)
    model = zoo.create_model("demo-tiny", task="retrieval").eval()  # built in memory, task recorded: retrieval
    app = build_app(model)
    assert app.zoo_task == "retrieval"
    texts = ["a red circle", "a blue square", "two green triangles"]
    want = zoo.pipeline("retrieval", model)(str(files / "scene.png"), texts)["ranking"]

    def cell(row: int, col: int):
        return page.locator(f"#ranking [data-testid='cell-{row}-{col}']")

    with _launched(app) as url:
        page.goto(url)
        _upload(page, files / "scene.png")
        page.locator("#submit").click()  # no texts: the pipeline's own ValueError, shown as a message
        _expect_error(page, "retrieval ranks texts: give at least one")
        page.locator("#texts textarea").fill("\n".join(texts))
        page.locator("#submit").click()
        cell(len(texts) - 1, 1).wait_for(state="visible")
        shown = [(cell(i, 1).inner_text().strip(), float(cell(i, 2).inner_text())) for i in range(len(texts))]
        assert [t for t, _ in shown] == [t for t, _ in want]
        assert [s for _, s in shown] == pytest.approx([s for _, s in want], abs=1e-3)
        _screenshot(page, tmp_path / "retrieval.png", capsys)


def test_chat_page_replies_like_the_pipeline_and_keeps_the_history(page, files, tmp_path, capsys):
    from zoo.serve import build_app

    torch.manual_seed(0)
    model = zoo.create_model("mmgpt-tiny").eval()  # built in memory: no task, but a chat method → the chat page
    app = build_app(model)
    assert app.zoo_task == "chat"
    chat, image = zoo.pipeline("chat", model), str(files / "scene.png")
    first = chat(image, "what is this?")["answer"]
    second = chat(image, "and its colour?", history=[("what is this?", first)])["answer"]
    assert first.strip() and second.strip()
    with _launched(app) as url:
        page.goto(url)
        _upload(page, files / "scene.png")
        replies = page.locator("#chatbot [data-testid=bot]")
        page.locator("#message textarea").fill("what is this?")
        page.locator("#submit").click()
        replies.nth(0).wait_for(state="visible")
        page.locator("#message textarea").fill("and its colour?")
        page.locator("#message textarea").press("Enter")
        replies.nth(1).wait_for(state="visible")
        assert [r.inner_text().strip() for r in replies.all()] == [first, second]
        _screenshot(page, tmp_path / "chat.png", capsys)


def test_nlvr_page_judges_a_pair_like_the_pipeline(page, files, tmp_path, capsys):
    from playwright.sync_api import expect

    from zoo.serve import build_app

    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="nlvr").eval()
    app = build_app(model)
    assert app.zoo_task == "nlvr"
    left, right = tmp_path / "left.png", tmp_path / "right.png"
    _scene().save(left)
    _scene((30, 30, 200)).save(right)
    statement = "the left image has a red circle"
    want = zoo.pipeline("nlvr", model)(str(left), str(right), statement)
    with _launched(app) as url:
        page.goto(url)
        _upload(page, left, "left")
        page.locator("#statement textarea").fill(statement)
        page.locator("#submit").click()  # one image of the pair missing: a message, not a traceback
        _expect_error(page, "upload the right image first")
        _upload(page, right, "right")
        page.locator("#submit").click()
        top = page.locator("#label [data-testid=label-output-value]")
        expect(top).to_have_text("true" if want["label"] else "false", timeout=WAIT_MS)
        shown = page.locator("#label [data-testid=true-confidence-set]").inner_text()  # "true\n52%"
        assert abs(float(shown.split()[-1].rstrip("%")) - 100 * want["prob"]) <= 0.51, shown
        _screenshot(page, tmp_path / "nlvr.png", capsys)


def test_task_choice_and_bad_task(files, gradio):
    from zoo.pipelines import _load_model
    from zoo.serve import build_app, infer_task

    assert infer_task(_load_model(files / "captioning")) == "captioning"
    with pytest.raises(ValueError, match="no demo page for task 'segmentation'"):
        build_app(files / "vqa", task="segmentation")
    with pytest.raises(ValueError, match="cannot do captioning"):  # the pipeline's own check
        build_app(files / "vqa", task="captioning")


def test_serve_prints_the_url_and_serves_until_closed(files, gradio, monkeypatch, capsys):
    import zoo.serve as serve_module

    built, build_app = [], serve_module.build_app
    monkeypatch.setattr(serve_module, "build_app", lambda *a, **k: built.append(build_app(*a, **k)) or built[-1])
    port = _free_port()
    thread = threading.Thread(target=serve_module.serve, args=(files / "vqa",), kwargs={"port": port}, daemon=True)
    thread.start()
    printed, deadline = "", time.monotonic() + 60
    while f"127.0.0.1:{port}" not in printed and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
        printed += capsys.readouterr().out
    assert f"the vqa demo is running at http://127.0.0.1:{port}" in printed
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert resp.status == 200 and b"gradio" in resp.read().lower()
        assert thread.is_alive()  # serve blocks while the app runs
    finally:
        built[0].close(verbose=False)
    thread.join(timeout=30)
    assert not thread.is_alive()
