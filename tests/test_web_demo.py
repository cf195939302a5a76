"""The Gradio web demo in a real headless browser (Debian's Chromium driven by Playwright): upload an image, ask a
grounding question, watch the answer stream in and the annotated image appear, and save the screenshot the README
shows. Also: the Space entry point serves the same app. Structure, not specific answers: the demo model changes."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers import AutoProcessor

from sphinx_x import demo_model_path
from sphinx_x.apps.web_demo import respond
from sphinx_x.cli import load_model


ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "grounding.png"
SCREENSHOT = ROOT / "docs" / "web_demo.png"
QUESTION = (
    "Please provide the bounding box coordinate of the region this sentence describes: "
    "the green star at the top."
)
CHROMIUM = "/usr/bin/chromium"
# Offline and quiet: no Google services, updates or QUIC probes from the browser.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(command: list[str], port: int, env: dict | None = None, timeout: float = 120) -> subprocess.Popen:
    """Start a server process and wait until it answers HTTP on `port`."""
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the demo exited early:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    pytest.fail(f"the demo did not answer on port {port} within {timeout} s:\n{server.stdout.read()[-3000:]}")


def stop(server: subprocess.Popen) -> str:
    server.terminate()
    try:
        output, _ = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        output, _ = server.communicate()
    return output


def test_a_chat_turn_streams_then_draws_and_the_next_turn_continues_the_conversation():
    model, processor = load_model(None)
    image = PIL.Image.open(EXAMPLE)
    # A first turn streams: the answer grows over several updates (streamers emit whole words; with an image, the
    # demo answers what touches the picture in one word, even "Write one sentence about the color red.", so the
    # question asks for a fact from elsewhere), each a prefix of the final one.
    first = "Tell me a fun fact about cats."
    updates = list(respond(model, processor, None, 40, first, image, [], []))
    states = [update[0][-1]["content"] for update in updates]
    assert len({state for state in states if state}) >= 2 and all(states[-1].startswith(state) for state in states)
    chat, annotated, messages, boxes, question = updates[-1]
    # A grounding question in the second turn: the conversation goes on (the image stays in the first user turn
    # only), and once the answer is complete its boxes are drawn on the image and listed in pixels.
    updates = list(respond(model, processor, None, 40, QUESTION, image, chat, messages))
    chat, annotated, messages, boxes, question = updates[-1]
    answer = chat[-1]["content"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant"]
    assert [part["type"] for part in messages[0]["content"]] == ["image", "text"]
    assert [part["type"] for part in messages[2]["content"]] == ["text"]
    assert chat[2:] == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
    assert question == "" and all(update[1] is not annotated for update in updates[:-1])
    assert annotated.size == image.size
    grounded = processor.post_process_grounding(answer, (image.height, image.width))
    expected = [[round(v, 2) for v in box] for entity in grounded["entities"] for box in entity["boxes"]]
    assert expected and [box["box"] for box in boxes] == expected


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file() or shutil.which("chromium") is None:
        pytest.fail(f"no Chromium at {CHROMIUM}; install it with: apt-get update && apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('Playwright is missing; install it with: pip install -e ".[test,demo]"')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_web_demo_streams_a_grounded_answer_and_draws_its_box(browser):
    port = free_port()
    server = serve([sys.executable, "-m", "sphinx_x.cli", "demo", "--port", str(port), "--max-new-tokens", "40"],
                   port)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#image input[type=file]").set_input_files(str(EXAMPLE))
        page.wait_for_selector("#image img", timeout=30_000)
        # Record every state of the answer bubble while it streams.
        page.evaluate("""() => {
            window.answerStates = [];
            const record = () => {
                const bots = document.querySelectorAll('#chat .bot');
                const text = bots.length ? bots[bots.length - 1].innerText.trim() : null;
                const last = window.answerStates[window.answerStates.length - 1];
                if (text && text !== last) window.answerStates.push(text);
            };
            new MutationObserver(record).observe(document.querySelector('#chat'),
                                                 {subtree: true, childList: true, characterData: true});
        }""")
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#send").click()
        page.wait_for_selector("#annotated img", timeout=120_000)
        page.wait_for_function("document.querySelector('#question textarea').value === ''")
        states = page.evaluate("window.answerStates")
        answer = page.locator("#chat .bot").last.inner_text().strip()
        assert QUESTION in page.locator("#chat").inner_text()
        # The bubble ends on the answer; whatever it showed before (Gradio's loading note, partial answers) is
        # never more than the answer: the terminator "\n###" is never shown.
        states = [state for state in states if state != "Loading content"]
        assert answer and states[-1] == answer and all(answer.startswith(state) for state in states), states
        # The annotated image is the uploaded one with the answer's boxes drawn in the first phrase colour (red).
        image = PIL.Image.open(EXAMPLE).convert("RGB")
        grounded = AutoProcessor.from_pretrained(demo_model_path()).post_process_grounding(
            answer, (image.height, image.width))
        boxes = [box for entity in grounded["entities"] for box in entity["boxes"]]
        assert boxes, f"a grounding question got no box: {answer!r}"
        source = page.locator("#annotated img").get_attribute("src")
        with urllib.request.urlopen(source, timeout=10) as response:
            annotated = PIL.Image.open(response).convert("RGB")
        assert annotated.size == image.size
        pixels = np.asarray(annotated).astype(int)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[0])
        outline = np.concatenate([pixels[y1, x1 : x2 + 1], pixels[y1 : y2 + 1, x1]])
        reddish = (outline[:, 0] > 180) & (outline[:, 1] < 80) & (outline[:, 2] < 80)
        assert reddish.mean() > 0.5
        assert page.locator("#boxes").inner_text().count('"box"') == len(boxes)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        log = stop(server)
    assert "Traceback" not in log, log[-3000:]


def test_space_entry_point_serves_the_demo(browser):
    port = free_port()
    server = serve([sys.executable, str(ROOT / "apps" / "app.py")], port,
                   env={"GRADIO_SERVER_PORT": str(port)})
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#question textarea", timeout=30_000)
        assert page.locator("#image input[type=file]").count() == 1
        assert "Detect all people shown in the image." in page.content()
    finally:
        stop(server)
