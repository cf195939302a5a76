"""Publishing to the Hub: folder completeness, model card choice and rendering, the dry-run plan, and the exact
upload calls. `HfApi` is replaced by a mock and sockets refuse to connect: no test reaches the network."""

import json
import re
import shutil
import socket
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import CommitOperationAdd

from sphinx_x.conversion import publish as publish_module
from sphinx_x.conversion.publish import (
    CARDS,
    PACKAGE_VERSION,
    card_for_config,
    human_size,
    plan_upload,
    publish,
    render_card,
)
from sphinx_x.presets import preset_config


REQUIRED = [
    "model.safetensors",
    "config.json",
    "configuration_sphinx_x.py",
    "modeling_sphinx_x.py",
    "image_processing_sphinx_x.py",
    "processing_sphinx_x.py",
    "grounding.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "generation_config.json",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a publishing test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def folder(converted_dir, tmp_path) -> Path:
    """A copy of the converted fixture (SPHINX-Tiny-1k layout, no README.md) that a test may break."""
    return Path(shutil.copytree(converted_dir, tmp_path / "sphinx-tiny-1k-hf"))


@pytest.fixture
def hf_api(monkeypatch):
    api_class = mock.Mock(name="HfApi")
    monkeypatch.setattr(publish_module, "HfApi", api_class)
    return api_class


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_file_is_named_before_any_network_call(folder, hf_api, name):
    (folder / name).unlink()
    with pytest.raises(ValueError, match=re.escape(name)) as error:
        publish(folder, "org/sphinx-tiny-1k")
    assert "sphinx-x convert" in str(error.value)  # says how to produce a complete folder
    hf_api.assert_not_called()


def test_every_problem_is_listed_in_one_error(folder, hf_api):
    for name in ("model.safetensors", "chat_template.jinja", "tokenizer.json"):
        (folder / name).unlink()
    edit_config(folder, lambda config: config["auto_map"].pop("AutoConfig"))
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError) as error:
        publish(folder, "org/sphinx-tiny-1k", dry_run=True)
    message = str(error.value)
    for piece in ("model.safetensors", "chat_template.jinja", "tokenizer.json", "auto_map lacks AutoConfig"):
        assert piece in message
    hf_api.assert_not_called()


def test_auto_map_must_point_at_shipped_code(folder, hf_api):
    edit_config(folder, lambda config: config["auto_map"].update(AutoModel="modeling_elsewhere.SphinxXModel"))
    with pytest.raises(ValueError, match=r"modeling_elsewhere\.py: missing"):
        publish(folder, "org/sphinx-tiny-1k", dry_run=True)
    edit_config(folder, lambda config: config.update(model_type="llava"))
    with pytest.raises(ValueError, match="not 'sphinx_x'"):
        publish(folder, "org/sphinx-tiny-1k", dry_run=True)


def test_sharded_weights_need_every_shard_of_the_index(folder, hf_api):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (folder / "model.safetensors").rename(folder / shards[0])
    index = {"metadata": {}, "weight_map": {"lm_head.weight": shards[0], "model.image_tags.start": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=re.escape(shards[1])):
        publish(folder, "org/sphinx-tiny-1k", dry_run=True)
    (folder / shards[1]).write_bytes(b"\0" * 64)
    planned = {planned.path_in_repo: planned for planned in publish(folder, "org/sphinx-tiny-1k", dry_run=True)}
    assert {*shards, "model.safetensors.index.json"} <= set(planned)
    assert planned[shards[1]].lfs and not planned["model.safetensors.index.json"].lfs
    hf_api.assert_not_called()


def test_the_card_is_rendered_into_the_upload_set(folder):
    planned = {planned.path_in_repo: planned for planned in plan_upload(folder, "org/my-sphinx")}
    card = planned["README.md"]
    # Chosen from the config (llama, ConvNeXt + DINOv2, 2x2 grid, no skip tokens) and uploaded from memory.
    assert card.source is None and card.note == "rendered from model_cards/sphinx-tiny-1k.md"
    assert card.content.decode() == render_card("sphinx-tiny-1k", repo_id="org/my-sphinx")
    assert '"org/my-sphinx"' in card.content.decode()
    assert not (folder / "README.md").exists()  # the folder itself is left as it was


def test_the_folder_card_is_kept_unless_a_template_is_forced(folder):
    (folder / "README.md").write_text("# My SPHINX\n")
    planned = {planned.path_in_repo: planned for planned in plan_upload(folder, "org/my-sphinx")}
    assert planned["README.md"].source == folder / "README.md"
    forced = {planned.path_in_repo: planned for planned in plan_upload(folder, "org/my-sphinx", card="sphinx-x-tiny")}
    assert forced["README.md"].content.decode() == render_card("sphinx-x-tiny", repo_id="org/my-sphinx")
    assert (folder / "README.md").read_text() == "# My SPHINX\n"
    with pytest.raises(ValueError, match="Unknown model card 'sphinx-xl'.*sphinx-x-tiny"):
        plan_upload(folder, "org/my-sphinx", card="sphinx-xl")


def test_a_card_that_cannot_be_chosen_asks_for_one(folder, hf_api):
    edit_config(folder, lambda config: config.update(image_grid=[3, 3]))
    with pytest.raises(ValueError, match=r"README.md: missing.*card=NAME \(--card NAME\)"):
        publish(folder, "org/sphinx", dry_run=True)
    assert publish(folder, "org/sphinx", dry_run=True, card="sphinx-tiny-1k")
    hf_api.assert_not_called()


@pytest.mark.parametrize("preset", [name for name in CARDS if name not in ("sphinx-1k", "sphinx-v2-1k")])
def test_the_card_follows_from_the_config(preset):
    assert card_for_config(preset_config(preset).to_dict()) == preset


def test_layouts_that_name_no_single_card_are_refused():
    with pytest.raises(ValueError, match="SPHINX-1k and SPHINX-v2-1k"):
        card_for_config(preset_config("sphinx-1k").to_dict())
    with pytest.raises(ValueError, match="none of the four SPHINX-X sizes"):
        card_for_config(preset_config("tiny-random").to_dict())


def test_dry_run_prints_the_plan_and_touches_nothing(folder, hf_api, capsys):
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "upload.lock").write_text("")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_sphinx_x.cpython-311.pyc").write_bytes(b"\0")
    plan = publish(folder, "org/my-sphinx", revision="v1", dry_run=True)
    hf_api.assert_not_called()

    assert {planned.path_in_repo for planned in plan} == set(REQUIRED) | {"README.md"}
    output = capsys.readouterr().out
    # One row per file: storage, size (number and unit), path, optional note.
    rows = {line.split()[3]: line for line in output.splitlines() if line.startswith(("  LFS", "  regular"))}
    assert set(rows) == set(REQUIRED) | {"README.md"}
    for planned in plan:
        storage = "LFS" if planned.lfs else "regular"
        assert rows[planned.path_in_repo].split()[:3] == [storage, *human_size(planned.size).split()]
    assert rows["model.safetensors"].split()[0] == "LFS" and rows["config.json"].split()[0] == "regular"
    assert "rendered from model_cards/sphinx-tiny-1k.md" in rows["README.md"]
    assert f"Commit to org/my-sphinx (branch v1): 'Upload my-sphinx with sphinx-x {PACKAGE_VERSION}'" in output
    total = sum(planned.size for planned in plan)
    assert f"Total: {len(REQUIRED) + 1} files, {human_size(total)} (1 with LFS, " in output
    assert "Dry run: nothing was uploaded." in output


def test_upload_is_one_commit_of_every_file_on_the_branch(folder, hf_api):
    commit = publish(folder, "org/my-sphinx", private=True, revision="v1", token="hf_test")
    hf_api.assert_called_once_with(token="hf_test")
    api = hf_api.return_value
    assert [call[0] for call in api.method_calls] == ["create_repo", "create_branch", "create_commit"]
    api.create_repo.assert_called_once_with("org/my-sphinx", repo_type="model", private=True, exist_ok=True)
    api.create_branch.assert_called_once_with("org/my-sphinx", repo_type="model", branch="v1", exist_ok=True)
    (repo_id, operations), options = api.create_commit.call_args
    assert repo_id == "org/my-sphinx"
    assert options == {"repo_type": "model", "revision": "v1",
                       "commit_message": f"Upload my-sphinx with sphinx-x {PACKAGE_VERSION}"}
    assert all(isinstance(operation, CommitOperationAdd) for operation in operations)
    sources = {operation.path_in_repo: operation.path_or_fileobj for operation in operations}
    assert set(sources) == set(REQUIRED) | {"README.md"}
    # Files go by path (huggingface_hub streams them); only the rendered card is passed as bytes.
    for name in REQUIRED:
        assert sources[name] == str(folder / name)
    assert sources["README.md"] == render_card("sphinx-tiny-1k", repo_id="org/my-sphinx").encode()
    assert commit is api.create_commit.return_value


def test_upload_to_the_default_branch_of_a_public_repo(folder, hf_api):
    publish(folder, "org/my-sphinx")
    hf_api.assert_called_once_with(token=None)
    api = hf_api.return_value
    api.create_repo.assert_called_once_with("org/my-sphinx", repo_type="model", private=False, exist_ok=True)
    api.create_branch.assert_not_called()
    api.create_commit.assert_called_once()
    assert api.create_commit.call_args.kwargs["revision"] is None


def test_bad_repo_id_or_folder_fails_before_the_network(folder, hf_api, tmp_path):
    with pytest.raises(ValueError):
        publish(folder, "org/has space")
    with pytest.raises(ValueError, match="is not a folder"):
        publish(tmp_path / "nowhere", "org/my-sphinx")
    hf_api.assert_not_called()
