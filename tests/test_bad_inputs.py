"""A corpus of bad inputs and injected faults: each gives its one clear error (or is skipped and counted) and leaves
nothing partial behind. Images, URLs (loopback servers that refuse, fail or never answer), processor calls, model
calls, the command line, conversion and assembly (signals in child processes), training data and resumption."""

import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from sphinx_x import SphinxXImageProcessor
from sphinx_x.cli import main
from sphinx_x.conversion.common import OWNER_FILE, ConversionError, atomic_output_folder, remove_stale_folders
from sphinx_x.processors.image_processing_sphinx_x import load_image

from conftest import chat_inputs


REPO = Path(__file__).resolve().parents[1]
# PIL warns from 89 megapixels on; the processor's own limit (100 megapixels) is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def png(size, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


# 1. Images given to the processor: the error names the image and the problem.

IMAGE_CASES = {
    "empty bytes": (b"", "image 0 could not be decoded"),
    "text bytes": (b"hello, not an image", "image 0 could not be decoded"),
    "truncated png": (png((64, 64))[:60], "image 0 could not be decoded"),
    "int16 array": (np.zeros((8, 8, 3), np.int16), "arrays must be uint8 or floats in [0, 1], got int16"),
    "float64 above one": (np.full((8, 8, 3), 1.5), "float arrays must hold values in [0, 1] (no NaN)"),
    "nan array": (np.full((8, 8, 3), np.nan, np.float32), "float arrays must hold values in [0, 1] (no NaN)"),
    "4-d array": (np.zeros((2, 8, 8, 3), np.uint8), "an array of shape (2, 8, 8, 3) is not an image"),
    "1-d array": (np.zeros(12, np.uint8), "an array of shape (12,) is not an image"),
    "two channels": (np.zeros((8, 8, 2), np.uint8), "an array of shape (8, 8, 2) is not an image"),
    "ambiguous [3, 40, 3]": (np.zeros((3, 40, 3), np.uint8), "shape (3, 40, 3) could be channels-first or"),
    "ambiguous tensor [4, 9, 3]": (torch.zeros(4, 9, 3), "shape (4, 9, 3) could be channels-first or"),
    "empty array": (np.zeros((0, 5, 3), np.uint8), "image 0 is empty (5x0 pixels)"),
    "missing path": ("/nonexistent/picture.png", "no file at '/nonexistent/picture.png'"),
    "a folder": ("/", "no file at '/'"),
    "a number": (42, "image 0 has type int; pass a PIL image"),
    "a dict": ({"path": "x.png"}, "image 0 has type dict; pass a PIL image"),
    "over 100,000 px a side": (png((100_001, 1), "1"), "is 100001x1 pixels, over the limit of 100,000,000 pixels"),
    "over 100 megapixels": (png((10_001, 10_000), "1"), "is 10001x10000 pixels, over the limit"),
}


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_bad_image(name):
    image, message = IMAGE_CASES[name]
    with pytest.raises(ValueError) as caught:
        SphinxXImageProcessor(tile_size=32)(image)
    assert message in str(caught.value)


def test_bfloat16_tensor_is_read_like_float32():
    image = torch.rand(3, 24, 40).to(torch.bfloat16)
    processor = SphinxXImageProcessor(tile_size=32)
    expected = processor(image.float())["pixel_values"]
    np.testing.assert_array_equal(processor(image)["pixel_values"], expected)


@pytest.mark.parametrize("size", [(20000, 10), (60000, 10), (10, 60000)], ids=["20000x10", "60000x10", "10x60000"])
def test_extreme_strips_are_processed(size):
    """Before the banded canvas, 20000x10 took 1.6 GB and 60000x10 raised MemoryError (benchmarks/ measures it)."""
    out = SphinxXImageProcessor()(PIL.Image.new("RGB", size, (200, 10, 10)))
    assert out["pixel_values"].shape == (1, 3, 1024, 1024) and np.isfinite(out["pixel_values"]).all()


# 2. Image URLs: loopback servers that fail, refuse or never answer. The error names the URL and the status.


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/picture.png":
            body, status, kind = png((8, 8)), 200, "image/png"
        elif self.path == "/page.html":
            body, status, kind = b"<html>not an image</html>", 200, "text/html"
        elif self.path == "/secret.png":
            body, status, kind = b"no", 403, "text/plain"
        else:
            body, status, kind = b"missing", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def silent_server():
    """Accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/picture.png"
    listener.close()


def closed_port_url() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}/picture.png"


def test_url_image_loads(server):
    assert load_image(f"{server}/picture.png").size == (8, 8)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/gone.png", "could not fetch image {url}: HTTP 404 Not Found"),
        ("/secret.png", "could not fetch image {url}: HTTP 403 Forbidden"),
        ("/page.html", "image 0 ({url}) could not be decoded"),
    ],
    ids=["404", "403", "html page"],
)
def test_url_failures_name_the_url_and_status(server, path, message):
    url = server + path
    with pytest.raises(ValueError) as caught:
        load_image(url)
    assert message.format(url=url) in str(caught.value)


def test_url_that_never_answers_times_out(silent_server, monkeypatch):
    monkeypatch.setenv("SPHINX_X_URL_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(ValueError) as caught:
        load_image(silent_server)
    assert f"could not fetch image {silent_server}: no answer within 0.5 s" in str(caught.value)
    assert time.monotonic() - start < 10


def test_refused_connection_names_the_url():
    url = closed_port_url()
    with pytest.raises(ValueError) as caught:
        load_image(url)
    assert f"could not fetch image {url}: [Errno 111] Connection refused" in str(caught.value)


# 3. Processor calls: images must match their prompts; typed `<image>` text is named as a cause.


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_and_processor):
    return tiny_model_and_processor


IMAGE = PIL.Image.new("RGB", (60, 40), (20, 200, 30))
PROCESSOR_CASES = {
    "image moved to another prompt": (
        dict(text=["<image> first", "second"], images=[[], [IMAGE]]),
        "prompt 0 holds 1 `<image>` but 0 images are given for it",
    ),
    "image for a prompt without <image>": (
        dict(text=["first", "<image> second"], images=[[IMAGE], [IMAGE]]),
        "prompt 0 holds 0 `<image>` but 1 images are given for it",
    ),
    "fewer image lists than prompts": (
        dict(text=["<image> a", "<image> b"], images=[[IMAGE]]),
        "images are given per prompt (1 lists) for 2 prompts",
    ),
    "typed <image> in the text": (
        dict(text="What does <image> mean in HTML?"),
        "the text holds 1 `<image>` (per prompt: [1]) but 0 images were given",
    ),
    "two <image> one image": (
        dict(text="<image><image> compare", images=[IMAGE]),
        "SPHINX takes one image per prompt; got 1 images for 1 prompts (2 `<image>` markers)",
    ),
    # One image and no `<image>` is the pipeline's form (the image goes in front); two are refused.
    "two images without <image>": (
        dict(text="describe", images=[IMAGE, IMAGE]),
        "SPHINX takes one image per prompt; got 2 images for 1 prompts (0 `<image>` markers)",
    ),
}


@pytest.mark.parametrize("name", PROCESSOR_CASES)
def test_processor_refuses_mismatched_images(model_and_processor, name):
    kwargs, message = PROCESSOR_CASES[name]
    with pytest.raises(ValueError) as caught:
        model_and_processor[1](**kwargs)
    assert message in str(caught.value)


def test_typed_image_tag_in_a_chat_names_the_text(model_and_processor):
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Is <image> a tag?"}]}]
    with pytest.raises(ValueError, match="if `<image>` is part of your own text, remove or reword it"):
        chat_inputs(model_and_processor[1], [conversation])


@pytest.mark.parametrize("conversation", [[], [[]], [[{"role": "user", "content": "hi"}], []]], ids=str)
def test_empty_conversation(model_and_processor, conversation):
    with pytest.raises(ValueError, match="The conversation is empty: pass at least one message"):
        model_and_processor[1].apply_chat_template(conversation, add_generation_prompt=True)


# 4. Model calls: shapes, dtypes, values and lengths are checked before any compute.


def model_call_case(name, inputs, processor):
    pixel_values, mask = inputs["pixel_values"], inputs["image_tile_mask"]
    ids = inputs["input_ids"]
    cases = {
        "3-d pixel_values": ({"pixel_values": pixel_values[0]}, "`pixel_values` must be [batch, 3, 1024, 1024]"),
        "wrong canvas": ({"pixel_values": pixel_values[..., :512]}, "got [1, 3, 1024, 512]"),
        "integer pixel_values": ({"pixel_values": pixel_values.long()}, "`pixel_values` must be floats"),
        "nan pixel_values": (
            {"pixel_values": pixel_values.clone().index_fill_(2, torch.tensor([5]), float("nan"))},
            "`pixel_values` hold NaN or infinite values",
        ),
        "inf pixel_values": ({"pixel_values": pixel_values.clone().fill_(float("inf"))}, "NaN or infinite"),
        "mask too wide": (
            {"image_tile_mask": torch.ones(1, 5, dtype=torch.bool)},
            "`image_tile_mask` must be [batch, num_tiles] = [1, 4] for these `pixel_values`, got [1, 5]",
        ),
        "mask batch": ({"image_tile_mask": mask.repeat(2, 1)}, "got [2, 4]"),
        "id past the vocabulary": (
            {"input_ids": ids.clone().index_fill_(1, torch.tensor([0]), 600)},
            "`input_ids` hold id 600, outside the vocabulary (0..511, and the image placeholder 512)",
        ),
        "negative id": ({"input_ids": ids.clone().index_fill_(1, torch.tensor([0]), -3)}, "hold id -3"),
    }
    changes, message = cases[name]
    return {**inputs, **changes}, message


MODEL_CALL_CASES = ["3-d pixel_values", "wrong canvas", "integer pixel_values", "nan pixel_values",
                    "inf pixel_values", "mask too wide", "mask batch", "id past the vocabulary", "negative id"]


@pytest.mark.parametrize("name", MODEL_CALL_CASES)
def test_bad_model_call(model_and_processor, name):
    model, processor = model_and_processor
    conversation = [{"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "hi"}]}]
    inputs, message = model_call_case(name, chat_inputs(processor, [conversation]), processor)
    with pytest.raises(ValueError) as caught, torch.inference_mode():
        model(**inputs)
    assert message in str(caught.value)


@pytest.mark.parametrize("as_keyword", [True, False])
def test_prompt_longer_than_the_context_is_refused_with_the_numbers(model_and_processor, as_keyword):
    """`generate` refuses it; a bare forward extrapolates, as transformers' models do (their RoPE-scaling tests)."""
    model, _ = model_and_processor
    context = model.config.text_config.max_position_embeddings
    input_ids = torch.full((1, context + 7), 5)
    with pytest.raises(ValueError) as caught, torch.inference_mode():
        if as_keyword:
            model.generate(input_ids=input_ids, max_new_tokens=1)
        else:
            model.generate(input_ids, max_new_tokens=1)
    assert f"The prompt is {context + 7} tokens long, over this model's context of {context} tokens" in str(
        caught.value
    )


# 5. The command line: one `sphinx-x: error:` line, exit status 2, nothing written.


def cli_error(argv, capsys) -> str:
    """The error line of a failed command: exit status 2, one `sphinx-x: error:` line, last on stderr (after any
    progress bar), nothing on stdout."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], captured.err
    assert lines[-1].startswith("sphinx-x: error: ") and captured.out == ""
    return lines[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--model", "./no_such_model", "hi"], "--model ./no_such_model: no such folder"),
        (["chat", "--model", "models/a/b", "hi"], "--model models/a/b: no such folder"),
        (["chat", "--model", str(REPO / "setup.py"), "hi"], "is a file; pass the folder that holds config.json"),
        (["convert", "accessory", "/no/such/src", "/tmp/never-written"], "/no/such/src is not a folder"),
        (["train", "/no/such/recipe.yaml"], "No such file or directory: '/no/such/recipe.yaml'"),
    ],
    ids=["relative folder", "nested path", "a file", "missing source", "missing recipe"],
)
def test_cli_errors(argv, message, capsys):
    assert message in cli_error(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_cuda_without_gpu(converted_dir, capsys):
    message = cli_error(["chat", "--model", str(converted_dir), "--device", "cuda", "hi"], capsys)
    assert "--device cuda: this machine has no usable CUDA GPU; use --device cpu." in message


def test_cli_negative_heads(fixture_dir, tmp_path, capsys):
    argv = ["convert", "accessory", str(fixture_dir / "checkpoint"), str(tmp_path / "out"), "--dinov2-num-heads", "-4"]
    assert "--dinov2-num-heads must be a positive number of attention heads, got -4." in cli_error(argv, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model: [unclosed", "is not valid YAML: while parsing a flow sequence"),
        ("- a list", "must hold a YAML mapping"),
    ],
    ids=["malformed", "a list"],
)
def test_cli_bad_recipe(tmp_path, capsys, content, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    assert message in cli_error(["train", str(recipe)], capsys)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_cli_max_new_tokens_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--max-new-tokens", value, "hi"])
    assert exited.value.code == 2
    assert "argument --max-new-tokens" in capsys.readouterr().err


def test_chat_prompt_stays_out_of_stdout(converted_dir, fixture_dir):
    """Questions on a pipe: stdout holds the answers only, no `you>` prompt (it goes to a terminal only)."""
    arguments = ["chat", "--model", str(converted_dir), "--max-new-tokens", "3",
                 "--image", str(fixture_dir / "inputs" / "synthetic_640x320.png")]
    script = "import sys, sphinx_x_cli; sys.exit(sphinx_x_cli.main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *arguments], input="What is it?\nAnd now?\n",
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "you>" not in done.stdout and "you>" not in done.stderr
    assert len(done.stdout.splitlines()) == 2  # one answer line per question


# 6. Writers: a kill leaves the complete result or nothing; leftovers of killed runs are removed.

# The writer loads `conversion/common.py` by path: importing `sphinx_x` (torch, transformers) would take seconds.
WRITER = """
import importlib.util, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal: a background job starts with it ignored
spec = importlib.util.spec_from_file_location("common", sys.argv[2])
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
with common.atomic_output_folder(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(120)
"""


def start_writer(dst: Path) -> tuple[subprocess.Popen, Path]:
    common = REPO / "conversion" / "common.py"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(dst), str(common)], stdout=subprocess.PIPE, text=True)
    tmp = Path(child.stdout.readline().strip())
    assert tmp.is_dir() and (tmp / OWNER_FILE).read_text() == str(child.pid)
    return child, tmp


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_terminated_writer_leaves_nothing(tmp_path, signum):
    dst = tmp_path / "converted"
    child, tmp = start_writer(dst)
    child.send_signal(signum)
    assert child.wait(timeout=60) != 0
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leftovers_are_removed_by_the_next_run(tmp_path):
    dst = tmp_path / "converted"
    child, tmp = start_writer(dst)
    child.kill()
    child.wait(timeout=60)
    assert tmp.is_dir()  # SIGKILL cannot be handled: the partial folder stays, marked with the dead writer's pid
    with atomic_output_folder(dst) as new:
        (new / "config.json").write_text("{}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["converted"]
    assert [path.name for path in dst.iterdir()] == ["config.json"]


def test_folder_of_a_running_writer_is_kept(tmp_path):
    dst = tmp_path / "converted"
    child, tmp = start_writer(dst)
    try:
        assert remove_stale_folders(dst) == [] and tmp.is_dir()
    finally:
        child.terminate()
        child.wait(timeout=60)


def test_kill_during_the_overwrite_swap_restores_the_old_folder(tmp_path):
    dst = tmp_path / "converted"
    swapped = tmp_path / ".converted.old.abc123"
    (swapped / "converted").mkdir(parents=True)
    (swapped / "converted" / "config.json").write_text('{"old": true}')
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (swapped / OWNER_FILE).write_text(dead.stdout.strip())
    assert remove_stale_folders(dst) == [swapped]
    assert json.loads((dst / "config.json").read_text()) == {"old": True}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["converted"]


FULL_DISK_WRITER = """
import importlib.util, resource, signal, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("common", sys.argv[2])
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    with common.atomic_output_folder(Path(sys.argv[1])) as tmp:
        (tmp / "model.safetensors").write_bytes(bytes(1 << 20))
except OSError as error:
    sys.exit(f"sphinx-x: error: {error}")
"""


def test_full_disk_leaves_nothing(tmp_path):
    """A write that fails for lack of space (staged with a file size limit) removes the partial folder."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(tmp_path / "converted"),
                           str(REPO / "conversion" / "common.py")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "sphinx-x: error: [Errno 27] File too large"
    assert list(tmp_path.iterdir()) == []


def test_overwrite_onto_a_mount_point_is_refused(tmp_path, monkeypatch):
    dst = tmp_path / "mounted"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == dst)
    with pytest.raises(ConversionError, match="is a mount point, which cannot be replaced"):
        with atomic_output_folder(dst, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mounted"]
    assert [path.name for path in dst.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            with atomic_output_folder(parent / "converted"):
                pass
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


# 7. Conversion and assembly: non-finite weights, impossible sizes.


def accessory_source(fixture_dir, tmp_path, **config_changes) -> Path:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(fixture_dir / "checkpoint", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **config_changes}))
    return src


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_heads": 0}, "config.json has n_heads=0, not a positive whole number"),
        ({"n_heads": "8"}, "config.json has n_heads='8', not a positive whole number"),
        ({"n_layers": -1}, "config.json has n_layers=-1"),
        ({"n_kv_heads": 2.5}, "config.json has n_kv_heads=2.5"),
    ],
    ids=["zero heads", "string heads", "negative layers", "fractional kv heads"],
)
def test_impossible_checkpoint_sizes(fixture_dir, tmp_path, changes, message):
    from sphinx_x.conversion.accessory import convert_accessory

    src = accessory_source(fixture_dir, tmp_path, **changes)
    with pytest.raises(ConversionError) as caught:
        convert_accessory(src, tmp_path / "out", dinov2_num_heads=4)
    assert message in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    import parts_factory

    folder = tmp_path_factory.mktemp("parts")
    parts_factory.write_llama(folder / "llm")
    convnext = parts_factory.write_open_clip_convnext(folder / "convnext", parts_factory.convnext_trunk(),
                                                      safetensors=True)
    parts_factory.write_dinov2(folder / "dinov2")
    return folder, convnext


def assemble_argv(parts, dst, *extra):
    folder, convnext = parts
    return ["convert", "assemble", "--preset", "sphinx-x-tiny", "--llm", str(folder / "llm"), "--convnext",
            str(convnext), "--dinov2", str(folder / "dinov2"), str(dst), "--dtype", "float32", *extra]


def test_assemble_refuses_nan_weights(parts, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    folder, convnext = parts
    llm = tmp_path / "llm"
    shutil.copytree(folder / "llm", llm)
    weights = load_file(llm / "model.safetensors")
    weights["model.norm.weight"][3] = float("nan")
    save_file(weights, llm / "model.safetensors", metadata={"format": "pt"})
    argv = assemble_argv(parts, tmp_path / "out")
    argv[argv.index("--llm") + 1] = str(llm)
    message = cli_error(argv, capsys)
    assert "model.language_model.norm.weight holds 1 NaN or infinite values (from the assembled parts)" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llm"]


def test_assemble_names_the_part_that_does_not_fit(parts, tmp_path, capsys):
    import shutil

    folder, _ = parts
    llm = tmp_path / "llm"
    shutil.copytree(folder / "llm", llm)
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] + 8}))
    argv = assemble_argv(parts, tmp_path / "out")
    argv[argv.index("--llm") + 1] = str(llm)
    message = cli_error(argv, capsys)
    assert "The LLM does not fit its config.json: model.language_model.layers.0.mlp.down_proj.weight is" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llm"]


def test_assemble_names_truncated_dinov2_weights(parts, tmp_path, capsys):
    import shutil

    folder, _ = parts
    dinov2 = tmp_path / "dinov2"
    shutil.copytree(folder / "dinov2", dinov2)
    weights = dinov2 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = assemble_argv(parts, tmp_path / "out")
    argv[argv.index("--dinov2") + 1] = str(dinov2)
    assert f"Cannot read the DINOv2 weights in {dinov2}:" in cli_error(argv, capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dinov2"]


def test_chat_names_a_truncated_weight_file(converted_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(converted_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    message = cli_error(["chat", "--model", str(model), "--device", "cpu", "hi"], capsys)
    assert f"--model {model}: a weight file cannot be read (" in message


def test_assemble_verify(parts, tmp_path, capsys):
    assert main(assemble_argv(parts, tmp_path / "out", "--verify")) == 0
    assert (tmp_path / "out" / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_corrupt_tokenizer_model(fixture_dir, tmp_path):
    from sphinx_x.conversion.accessory import convert_accessory

    src = accessory_source(fixture_dir, tmp_path)
    (src / "tokenizer.model").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ConversionError) as caught:
        convert_accessory(src, tmp_path / "out", dinov2_num_heads=4)
    assert f"{src / 'tokenizer.model'} is not a readable SentencePiece model" in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("name, content", [("tokenizer.model", b"garbage\n"), ("tokenizer.json", b"{bad")])
def test_assemble_names_a_corrupt_tokenizer(tmp_path, name, content):
    from sphinx_x.conversion.assemble import load_tokenizer

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConversionError, match=f"{tmp_path / name} is not a readable tokenizer .*original tokenizer"):
        load_tokenizer(tmp_path, 32000)


def test_config_of_another_model_type_is_refused(tmp_path):
    from transformers import LlamaConfig

    from sphinx_x import SphinxXForConditionalGeneration

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="This config.json is for model_type 'llama', not 'sphinx_x'"):
        SphinxXForConditionalGeneration.from_pretrained(tmp_path)


def test_publish_to_a_silent_hub_times_out(converted_dir, silent_server, monkeypatch):
    import functools

    from sphinx_x.conversion import publish

    endpoint = silent_server.rsplit("/", 1)[0]
    monkeypatch.setattr(publish, "HfApi", functools.partial(publish.HfApi, endpoint=endpoint))
    monkeypatch.setattr(publish, "HUB_TIMEOUT", 0.5)
    start = time.monotonic()
    with pytest.raises(ValueError) as caught:
        publish.publish(converted_dir, "org/model", card="sphinx-tiny-1k", token="hf_not_a_real_token")
    assert f"could not reach the Hub at {endpoint} (ReadTimeout: timed out)" in str(caught.value)
    assert time.monotonic() - start < 30


# 8. Training: bad records are skipped and counted, resumption takes only complete checkpoints.


def make_checkpoint(folder: Path, complete: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text('{"global_step": 1}')
    return folder


def test_resume_skips_an_incomplete_last_checkpoint(tmp_path):
    from sphinx_x.training.train import resume_checkpoint

    make_checkpoint(tmp_path / "checkpoint-5", complete=True)
    make_checkpoint(tmp_path / "checkpoint-10", complete=False)
    (tmp_path / "checkpoint-9x").mkdir()  # not a checkpoint name
    assert resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-5")


@pytest.mark.parametrize(
    ("setup", "requested", "message"),
    [
        ("only incomplete", True, "No complete checkpoint to resume from in {out} (only incomplete ones: checkpoint-"),
        ("none", True, "No complete checkpoint to resume from in {out}."),
        ("only incomplete", "checkpoint-3", "{out}/checkpoint-3 is an incomplete checkpoint"),
        ("none", "checkpoint-7", "No checkpoint folder at {out}/checkpoint-7"),
        ("corrupt state", "checkpoint-3", "{out}/checkpoint-3 is an incomplete checkpoint"),
    ],
    ids=["only incomplete", "empty folder", "incomplete asked for", "missing asked for", "corrupt trainer state"],
)
def test_resume_refusals(tmp_path, setup, requested, message):
    from sphinx_x.training.recipe import RecipeError
    from sphinx_x.training.train import resume_checkpoint

    if setup != "none":
        folder = make_checkpoint(tmp_path / "checkpoint-3", complete=setup == "corrupt state")
        if setup == "corrupt state":
            (folder / "trainer_state.json").write_text('{"global_st')
    if requested is not True:
        requested = str(tmp_path / requested)
    with pytest.raises(RecipeError) as caught:
        resume_checkpoint(requested, str(tmp_path))
    assert str(caught.value).startswith(message.format(out=tmp_path))


@pytest.fixture(scope="module")
def collator():
    from test_data import SMALL_GEOMETRY

    from sphinx_x.training.collator import SphinxXDataCollator

    from conftest import make_tiny_model_and_processor

    processor = make_tiny_model_and_processor(**SMALL_GEOMETRY)[1]
    return lambda: SphinxXDataCollator(processor=processor, assistant_only_loss=True, max_length=2000)


def record(image) -> dict:
    return {"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."}],
            "images": [image]}


GOOD = PIL.Image.new("RGB", (40, 30), (220, 10, 10))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("gone", "corrupt_image"),
        ("page", "corrupt_image"),
        ("refused", "corrupt_image"),
        ("huge", "corrupt_image"),
        ("raises", "failed"),
    ],
    ids=["url 404", "url html page", "url refused", "over the pixel limit", "memory error while checking"],
)
def test_training_record_failures_are_skipped_and_counted(collator, server, monkeypatch, bad, reason):
    collate = collator()
    image = {"gone": f"{server}/gone.png", "page": f"{server}/page.html", "refused": closed_port_url(),
             "huge": png((100_001, 1), "1"), "raises": GOOD}[bad]
    if bad == "raises":
        def out_of_memory(text, images):
            raise MemoryError("cannot allocate")

        monkeypatch.setattr(collate, "sequence_length", out_of_memory)
    batch = collate([record(GOOD), record(image)]) if bad != "raises" else collate([record(image)])
    totals = collate.skipped.totals()
    assert totals[reason] == 1 and sum(totals.values()) == 1
    if bad != "raises":
        assert batch["input_ids"].shape[0] == 1 and (batch["labels"] != -100).any()
