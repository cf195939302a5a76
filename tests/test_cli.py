"""The `sphinx-x` command line: conversion with safe output handling, chat with streaming."""

import io
import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, TextStreamer

from sphinx_x.cli import StopStringFilter, main


class CapturingStreamer(TextStreamer):
    text = ""

    def on_finalized_text(self, text, stream_end=False):
        self.text += text


def test_convert_accessory_writes_a_loadable_folder(fixture_dir, tmp_path, capsys):
    dst = tmp_path / "out"
    argv = ["convert", "accessory", str(fixture_dir / "checkpoint"), str(dst), "--dtype", "float32",
            "--dinov2-num-heads", "4"]
    assert main(argv) == 0
    names = {path.name for path in dst.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "modeling_sphinx_x.py", "configuration_sphinx_x.py",
            "processing_sphinx_x.py", "image_processing_sphinx_x.py"} <= names
    config = json.loads((dst / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_sphinx_x.SphinxXForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_sphinx_x.SphinxXModel"
    assert config["use_skip_tokens"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    # An existing output is never replaced without --overwrite.
    stamp = (dst / "config.json").stat().st_mtime_ns
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dst / "config.json").stat().st_mtime_ns == stamp
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("unknown_type", "llama_type"),
        ("no_meta", "meta.json"),
        ("no_shard", "shards"),
        ("no_heads", "--dinov2-num-heads"),
    ],
)
def test_convert_errors_leave_no_output(fixture_dir, tmp_path, capsys, breakage, message):
    src = tmp_path / "src"
    shutil.copytree(fixture_dir / "checkpoint", src)
    extra = ["--dinov2-num-heads", "4"]
    if breakage == "unknown_type":
        (src / "meta.json").write_text(json.dumps({"llama_type": "llama_ens_unheard_of"}))
    elif breakage == "no_meta":
        (src / "meta.json").unlink()
    elif breakage == "no_shard":
        (src / "consolidated.00-of-01.model.pth").unlink()
    else:
        extra = []
    dst = tmp_path / "dst"
    assert main(["convert", "accessory", str(src), str(dst), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_chat_answers_one_question(converted_dir, fixture_dir, capsys):
    image = fixture_dir / "inputs" / "synthetic_640x320.png"
    argv = ["chat", "--model", str(converted_dir), "--image", str(image), "--max-new-tokens", "8",
            "Describe the image in detail."]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # The reference's greedy tokens, decoded incrementally as a streamer does.
    greedy_ids = torch.load(fixture_dir / "reference_outputs.pt", weights_only=True)["greedy_ids"]
    streamer = CapturingStreamer(AutoProcessor.from_pretrained(converted_dir).tokenizer, skip_special_tokens=True)
    for token in greedy_ids:
        streamer.put(token[None])
    streamer.end()
    assert printed == streamer.text + "\n"


def test_chat_reports_a_missing_image(converted_dir, capsys):
    assert main(["chat", "--model", str(converted_dir), "--image", "/no/such/image.png", "hi"]) == 2
    assert "no file at" in capsys.readouterr().err


def test_chat_reports_a_generation_error_instead_of_hanging(converted_dir, capsys, monkeypatch):
    from sphinx_x.modeling_sphinx_x import SphinxXForConditionalGeneration

    def fail(self, **kwargs):
        kwargs["streamer"].put(torch.tensor([[1]]))  # the prompt, as generate sends it first
        raise ValueError("the model refused")

    monkeypatch.setattr(SphinxXForConditionalGeneration, "generate", fail)
    assert main(["chat", "--model", str(converted_dir), "hi"]) == 2
    assert "the model refused" in capsys.readouterr().err


@pytest.mark.parametrize("chunks", [["Hello", " world\n###"], ["Hello world\n", "#", "##", " Human"], ["Hi"]])
def test_stream_filter_never_prints_the_terminator(chunks):
    out = io.StringIO()
    printer = StopStringFilter("\n###", out)
    for chunk in chunks:
        printer.feed(chunk)
    printer.close()
    expected = "".join(chunks).split("\n###")[0]
    assert out.getvalue() == expected + "\n"


def test_convert_assemble_from_parts(tmp_path, capsys):
    import parts_factory

    parts_factory.write_llama(tmp_path / "llm")
    convnext = parts_factory.write_open_clip_convnext(tmp_path / "convnext", parts_factory.convnext_trunk(),
                                                      safetensors=True)
    parts_factory.write_dinov2(tmp_path / "dinov2")
    dst = tmp_path / "assembled"
    argv = ["convert", "assemble", "--preset", "sphinx-x-tiny", "--llm", str(tmp_path / "llm"), "--convnext",
            str(convnext), "--dinov2", str(tmp_path / "dinov2"), str(dst), "--dtype", "float32"]
    assert main(argv) == 0
    config = json.loads((dst / "config.json").read_text())
    assert config["use_skip_tokens"] is True and config["text_config"]["model_type"] == "llama"
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    wrong_family = ["convert", "assemble", "--preset", "sphinx-x-moe", *argv[4:-3], str(tmp_path / "moe")]
    assert main(wrong_family) == 2
    assert "sphinx-x-moe" in capsys.readouterr().err and not (tmp_path / "moe").exists()


def test_publish_dry_run_makes_no_network_call(converted_dir, capsys, monkeypatch):
    import sphinx_x.conversion.publish as publish_module

    monkeypatch.setattr(publish_module, "HfApi", None)  # any use of the Hub client would fail
    assert main(["publish", str(converted_dir), "--repo-id", "org/sphinx-tiny-1k", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "README.md" in printed and "nothing was uploaded" in printed
    assert main(["publish", str(converted_dir), "--repo-id", "not a repo id", "--dry-run"]) == 2


def test_convert_accessory_verify_and_sharding_flags(fixture_dir, tmp_path):
    dst = tmp_path / "verified"
    argv = ["convert", "accessory", str(fixture_dir / "checkpoint"), str(dst), "--dtype", "float32",
            "--dinov2-num-heads", "4", "--verify", "--max-shard-size", "500KB"]
    assert main(argv) == 0
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
