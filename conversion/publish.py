"""Publish a converted SPHINX-X folder to the Hugging Face Hub.

Everything that can fail locally is checked before the first network call: the folder must hold weights, config
with `auto_map` and the remote-code files, tokenizer, processor, chat template, generation config and a model card
(rendered from `model_cards/` when the folder has none). The upload is then one commit of all files, passed to
`huggingface_hub` by path so that large weights are streamed (and stored with LFS) rather than read into memory.
"""

import json
import string
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_session
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_relative_imports


PACKAGE_VERSION = version("sphinx-x")

# Seconds the Hub may stay silent (connecting, or between two bytes of an answer) before an upload fails.
HUB_TIMEOUT = 60.0

# Sibling of the package's `conversion/` folder, both in a source checkout and in an installed `sphinx_x`.
MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"

# One template per SPHINX-X size and per released LLaMA2-Accessory checkpoint (`model_cards/<name>.md`); the
# names are those of `sphinx_x.presets`. Files starting with `_` are sections shared by several cards.
CARDS = (
    "sphinx-x-tiny",
    "sphinx-x-internlm2-7b",
    "sphinx-x-llama2-13b",
    "sphinx-x-moe",
    "sphinx-tiny",
    "sphinx-tiny-1k",
    "sphinx",
    "sphinx-1k",
    "sphinx-v2-1k",
    "sphinx-moe",
    "sphinx-moe-1k",
)

CODE_FILES = ("configuration_sphinx_x.py", "modeling_sphinx_x.py", "image_processing_sphinx_x.py",
              "processing_sphinx_x.py")
CONVERT_HINT = (
    "A complete folder is what `sphinx-x convert accessory SRC DIR` (released checkpoints) or `sphinx-x convert "
    "assemble ... DIR` (SPHINX-X sizes) writes; `model.save_pretrained(DIR)` and `processor.save_pretrained(DIR)` "
    "of a loaded model write the same files."
)

# The Hub stores these with LFS whatever their size (its default .gitattributes), and any file over 10 MB or with
# binary content; the server has the last word, so the dry run calls its column a prediction.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz")
REGULAR_FILE_LIMIT = 10 * 1000 * 1000


@dataclass(frozen=True)
class PlannedFile:
    """One file of the commit: a file of the folder (`source`) or the rendered model card (`content`)."""

    path_in_repo: str
    size: int
    lfs: bool
    source: Path | None = None
    content: bytes | None = None
    note: str = ""


def render_card(name: str, *, repo_id: str, model_name: str | None = None) -> str:
    """The model card `model_cards/<name>.md` with its `$placeholders` filled.

    Placeholders: `repo_id`, `model_name` (default: the repository name), `package_version`, and one per shared
    section `model_cards/_<section>.md` (itself a template with the same placeholders).
    """
    if name not in CARDS:
        raise ValueError(f"Unknown model card {name!r}; choose one of: {', '.join(CARDS)}.")
    values = {
        "repo_id": repo_id,
        "model_name": model_name or repo_id.rsplit("/", 1)[-1],
        "package_version": PACKAGE_VERSION,
    }
    for section in sorted(MODEL_CARDS.glob("_*.md")):
        text = section.read_text(encoding="utf-8").rstrip("\n")  # the card's own line breaks frame each section
        values[section.stem[1:]] = string.Template(text).substitute(values)
    return string.Template((MODEL_CARDS / f"{name}.md").read_text(encoding="utf-8")).substitute(values)


def card_for_config(config: dict) -> str:
    """The card that describes a saved SphinxXConfig (a `config.json` as a dict).

    The layout decides: released checkpoints (no skip tokens) differ by LLM family, encoder set and grid; the
    SPHINX-X sizes by their LLM's shape. Raises ValueError when the config matches no card or two (SPHINX-1k and
    SPHINX-v2-1k share one layout: `publish --card` names it).
    """
    text = config.get("text_config") or {}
    llm = text.get("model_type")
    encoders = frozenset(name for name in ("clip", "convnext", "dinov2", "qformer") if config.get(f"{name}_config"))
    grid = tuple(config.get("image_grid") or ())
    light, four = frozenset({"convnext", "dinov2"}), frozenset({"clip", "convnext", "dinov2", "qformer"})
    if config.get("use_skip_tokens"):
        # Hidden size, depth and KV heads tell the LLMs apart (InternLM2-7B from LLaMA2-7B too) whatever the vocabulary.
        shape = (text.get("hidden_size"), text.get("num_hidden_layers"), text.get("num_key_value_heads"))
        sizes = {
            ("llama", (2048, 22, 4)): "sphinx-x-tiny",
            ("llama", (4096, 32, 8)): "sphinx-x-internlm2-7b",
            ("llama", (5120, 40, 40)): "sphinx-x-llama2-13b",
            ("mixtral", (4096, 32, 8)): "sphinx-x-moe",
        }
        name = sizes.get((llm, shape)) if encoders == light else None
        if name is None:
            raise ValueError(
                f"this SPHINX-X model ({llm}, hidden size/layers/KV heads {shape}, encoders {sorted(encoders)}) is "
                "none of the four SPHINX-X sizes"
            )
        return name
    released = {
        ("llama", light, (1, 1)): "sphinx-tiny",
        ("llama", light, (2, 2)): "sphinx-tiny-1k",
        ("llama", four, (1, 1)): "sphinx",
        ("mixtral", four, (1, 1)): "sphinx-moe",
        ("mixtral", four, (2, 2)): "sphinx-moe-1k",
    }
    if (llm, encoders, grid) == ("llama", four, (2, 2)):
        raise ValueError("SPHINX-1k and SPHINX-v2-1k share this layout")
    if (llm, encoders, grid) not in released:
        raise ValueError(
            f"no released SPHINX checkpoint has this layout ({llm}, encoders {sorted(encoders)}, grid {list(grid)})"
        )
    return released[llm, encoders, grid]


def read_json(path: Path, problems: list[str], what: str) -> dict | None:
    """The JSON object in `path`, or None after recording why it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path.name}: missing ({what})")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path.name}: not valid JSON ({error})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a JSON object")
        return None
    return data


def code_files_of(auto_map: dict) -> set[str]:
    """The .py files an `auto_map` points at (`module.Class`, `repo--module.Class`, or a list of those)."""
    files = set()
    for references in auto_map.values():
        for reference in references if isinstance(references, list) else [references]:
            if reference:
                files.add(reference.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return files


def missing_pieces(folder: Path) -> tuple[list[str], dict | None]:
    """What keeps `folder` from loading everywhere (with or without `trust_remote_code`), and its config."""
    problems = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = (read_json(index, problems, "the shard index") or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            problems.append(f"{index.name}: has no weight_map")
        else:
            problems += [f"{shard}: missing (a weight shard named by {index.name})"
                         for shard in sorted(set(weight_map.values())) if not (folder / shard).is_file()]
    elif not (folder / "model.safetensors").is_file():
        problems.append("model.safetensors (or model.safetensors.index.json and its shards): missing (the weights; "
                        "model.save_pretrained writes them)")

    config = read_json(folder / "config.json", problems, "the model config; model.save_pretrained writes it")
    code_files = set(CODE_FILES)
    if config is not None:
        if config.get("model_type") != "sphinx_x":
            problems.append(f"config.json: model_type is {config.get('model_type')!r}, not 'sphinx_x'")
        auto_map = config.get("auto_map") or {}
        for auto_class in ("AutoConfig", "AutoModelForImageTextToText"):
            if auto_class not in auto_map:
                problems.append(f"config.json: auto_map lacks {auto_class} (needed to load with trust_remote_code)")
        code_files |= code_files_of(auto_map)
    processor_config = read_json(folder / "processor_config.json", problems,
                                 "the processor config; processor.save_pretrained writes it")
    if processor_config is not None:
        code_files |= code_files_of(processor_config.get("auto_map") or {})
        code_files |= code_files_of((processor_config.get("image_processor") or {}).get("auto_map") or {})
    problems += [f"{name}: missing (remote code named by auto_map)" for name in sorted(code_files)
                 if not (folder / name).is_file()]
    imported = {f"{module}.py" for name in code_files if (folder / name).is_file()
                for module in get_relative_imports(folder / name)} - code_files
    problems += [f"{name}: missing (remote code imported by the code files)" for name in sorted(imported)
                 if not (folder / name).is_file()]

    for name, what in (
        ("tokenizer.json", "the tokenizer; processor.save_pretrained writes it"),
        ("tokenizer_config.json", "the tokenizer config; processor.save_pretrained writes it"),
        ("chat_template.jinja", "the chat template; processor.save_pretrained writes it"),
        ("generation_config.json", "stop sequences and decoding defaults; model.save_pretrained writes it"),
    ):
        if not (folder / name).is_file():
            problems.append(f"{name}: missing ({what})")
    return problems, config


def stored_with_lfs(path: Path, size: int) -> bool:
    if path.suffix.lower() in LFS_SUFFIXES or size > REGULAR_FILE_LIMIT:
        return True
    with path.open("rb") as file:
        return b"\0" in file.read(512)


def folder_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, without hidden entries (.git, .cache, ...) and Python caches."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                      for part in path.relative_to(folder).parts)
    )


def plan_upload(folder: str | Path, repo_id: str, *, card: str | None = None) -> list[PlannedFile]:
    """The files of the commit, after checking the folder; one ValueError lists everything that is missing.

    The model card is the folder's `README.md`, or the template `card` (which then replaces that file in the
    upload), or, when the folder has no `README.md`, the template chosen from the config.
    """
    folder = Path(folder)
    validate_repo_id(repo_id)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder. {CONVERT_HINT}")
    problems, config = missing_pieces(folder)

    if card is None and not (folder / "README.md").is_file():
        reason = "config.json is unusable"
        if config is not None:
            try:
                card = card_for_config(config)
            except ValueError as error:
                reason = str(error)
        if card is None:
            problems.append(f"README.md: missing, and no model card template could be chosen ({reason}); pass "
                            f"card=NAME (--card NAME) with NAME one of: {', '.join(CARDS)}")
    rendered = render_card(card, repo_id=repo_id).encode("utf-8") if card is not None else None
    if problems:
        raise ValueError(f"{folder} is not ready to publish:\n" + "\n".join(f"  - {p}" for p in problems)
                         + f"\n{CONVERT_HINT}")

    plan = []
    for path in folder_files(folder):
        name = path.relative_to(folder).as_posix()
        if name == "README.md" and rendered is not None:
            continue
        size = path.stat().st_size
        plan.append(PlannedFile(name, size, stored_with_lfs(path, size), source=path))
    if rendered is not None:
        plan.append(PlannedFile("README.md", len(rendered), False, content=rendered,
                                note=f"rendered from model_cards/{card}.md"))
    return sorted(plan, key=lambda planned: planned.path_in_repo)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            break
        value /= 1000
    else:
        unit = "TB"
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def describe_plan(plan: list[PlannedFile], repo_id: str, revision: str | None, message: str) -> str:
    lfs = [planned for planned in plan if planned.lfs]
    lines = [f"Commit to {repo_id} (branch {revision or 'main'}): {message!r}",
             "  storage   size       file  (LFS/regular as predicted; the Hub decides on upload)"]
    for planned in plan:
        note = f"  ({planned.note})" if planned.note else ""
        lines.append(f"  {'LFS' if planned.lfs else 'regular':8}  {human_size(planned.size):>9}  "
                     f"{planned.path_in_repo}{note}")
    lines.append(f"Total: {len(plan)} files, {human_size(sum(p.size for p in plan))} "
                 f"({len(lfs)} with LFS, {human_size(sum(p.size for p in lfs))}).")
    return "\n".join(lines)


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    card: str | None = None,
    token: str | None = None,
):
    """Upload a converted SPHINX-X folder to the Hub repository `repo_id` in one commit.

    The repository is created when missing (`private` applies only then), and so is the branch `revision`. With
    `dry_run=True` the commit plan is printed and returned, and nothing touches the network. Otherwise returns the
    `CommitInfo` of the commit.
    """
    plan = plan_upload(folder, repo_id, card=card)
    message = f"Upload {repo_id.rsplit('/', 1)[-1]} with sphinx-x {PACKAGE_VERSION}"
    print(describe_plan(plan, repo_id, revision, message))
    if dry_run:
        print("Dry run: nothing was uploaded.")
        return plan

    # Paths, not bytes: huggingface_hub streams each file for hashing and upload, so weights never sit in memory.
    operations = [CommitOperationAdd(planned.path_in_repo,
                                     str(planned.source) if planned.source is not None else planned.content)
                  for planned in plan]
    api = HfApi(token=token)
    get_session().timeout = HUB_TIMEOUT  # huggingface_hub waits forever by default: a silent Hub would hang here
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, repo_type="model", branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id, operations, repo_type="model", revision=revision, commit_message=message
        )
    except HfHubHTTPError as error:
        raise ValueError(f"the Hub at {api.endpoint} refused the upload to {repo_id}: {error}") from None
    except Exception as error:
        if not type(error).__module__.startswith("httpx"):  # the HTTP client of huggingface_hub: network failures
            raise
        raise ValueError(
            f"could not reach the Hub at {api.endpoint} ({type(error).__name__}: {error}); check the network "
            f"(a Hub silent for {HUB_TIMEOUT:g} s is given up)."
        ) from None
    print(f"Uploaded: {commit.commit_url}")
    return commit
