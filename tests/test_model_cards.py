"""Model cards: every template renders; its front matter carries the Hub metadata and the license of its LLM; its
numbers are exactly the sourced ones; and its Python usage runs against the tiny converted model (the
package snippets in this process, the remote-code snippets in a process that cannot import `sphinx_x`)."""

import re
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from sphinx_x.conversion.publish import CARDS, MODEL_CARDS, render_card

from remote_code import run_without_sphinx_x


REPO_ID = "org/sphinx-card-test"
IMAGE_URL = re.compile(r"https?://[^\"'\s]+\.(?:jpe?g|png)")

TINYLLAMA = "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
LLAMA2_13B = "meta-llama/Llama-2-13b-hf"
MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
INTERNLM2 = "internlm/internlm2-7b"
APACHE, LLAMA2 = {"license": "apache-2.0"}, {"license": "llama2"}
INTERNLM_LICENSE = {"license": "other", "license_name": "internlm-license",
                    "license_link": "https://huggingface.co/internlm/internlm2-7b"}
# card -> (base model, license metadata): the license follows the LLM.
METADATA = {
    "sphinx-x-tiny": (TINYLLAMA, APACHE),
    "sphinx-x-internlm2-7b": (INTERNLM2, INTERNLM_LICENSE),
    "sphinx-x-llama2-13b": (LLAMA2_13B, LLAMA2),
    "sphinx-x-moe": (MIXTRAL, APACHE),
    "sphinx-tiny": (TINYLLAMA, APACHE),
    "sphinx-tiny-1k": (TINYLLAMA, APACHE),
    "sphinx": (LLAMA2_13B, LLAMA2),
    "sphinx-1k": (LLAMA2_13B, LLAMA2),
    "sphinx-v2-1k": (LLAMA2_13B, LLAMA2),
    "sphinx-moe": (MIXTRAL, APACHE),
    "sphinx-moe-1k": (MIXTRAL, APACHE),
}
# The only sourced numbers (spec section 11.3), each on the card of the model it was reported for, with its source.
SOURCED = {
    "sphinx-x-llama2-13b": ({"47.9", "39.7"}, ["paperswithcode.com/paper/sphinx-x-scaling-data-and-parameters-for-a"]),
    "sphinx-x-moe": ({"43.6", "17.9"}, ["arxiv.org/abs/2403.20330"]),
    "sphinx-v2-1k": ({"57.43"}, ["paperswithcode.com/paper/sphinx-the-joint-mixing-of-weights-tasks-and",
                                 "news of 2023-12-12"]),
    "sphinx-moe": ({"49.33", "29.57", "29.33"}, ["news of 2024-01-24", "news of 2024-01-27", "news of 2024-01-20"]),
}
RELEASED = ("sphinx-tiny", "sphinx-tiny-1k", "sphinx", "sphinx-1k", "sphinx-v2-1k", "sphinx-moe", "sphinx-moe-1k")


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)


def section(card: str, title: str) -> str:
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


RENDERED = {name: render_card(name, repo_id=REPO_ID) for name in CARDS}
# Identical snippets (the shared usage section) run once; the id names the cards that show them.
SNIPPETS: dict[str, list[str]] = {}
for _name, _card in RENDERED.items():
    for _block in python_blocks(_card):
        SNIPPETS.setdefault(_block, []).append(_name)


def localise(snippet: str, model_dir: Path, image: Path) -> str:
    """The snippet on the local tiny model and test image, with a short answer."""
    snippet = snippet.replace(f'"{REPO_ID}"', repr(str(model_dir)))
    snippet = IMAGE_URL.sub(str(image), snippet)
    return re.sub(r"max_new_tokens=\d+", "max_new_tokens=3", snippet)


def snippet_id(snippet: str) -> str:
    kind = "remote-code" if "trust_remote_code=True" in snippet else "pipeline" if "pipeline(" in snippet else "auto"
    return f"{kind}[{','.join(SNIPPETS[snippet])}]"


def test_there_is_one_template_per_card():
    assert len(CARDS) == 11
    assert {path.stem for path in MODEL_CARDS.glob("*.md") if not path.name.startswith("_")} == set(CARDS)


@pytest.mark.parametrize("name", CARDS)
def test_front_matter_has_the_hub_metadata_of_the_llm(name):
    card = RENDERED[name]
    assert "${" not in card and REPO_ID in card
    data = ModelCard(card).data.to_dict()
    base_model, license_fields = METADATA[name]
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["base_model"] == base_model
    assert {key: data.get(key) for key in ("license", "license_name", "license_link")} == {
        "license": None, "license_name": None, "license_link": None, **license_fields
    }
    assert "sphinx" in data["tags"] and "custom_code" in data["tags"]


@pytest.mark.parametrize("name", CARDS)
def test_numbers_are_the_sourced_ones_with_their_sources(name):
    card = RENDERED[name]
    numbers, sources = SOURCED.get(name, (set(), []))
    # Every decimal of the section, judge names ("GPT-3.5 score") and arXiv ids aside.
    results = re.sub(r"GPT-[\d.]+|\b\d{4}\.\d{4,5}\b", "", section(card, "Reported results"))
    assert set(re.findall(r"\d+\.\d+", results)) == numbers
    for source in sources:
        assert source in card
    if not numbers:
        assert "No benchmark number" in section(card, "Reported results")
    # A number reported for one model appears on no other card.
    for other, (other_numbers, _) in SOURCED.items():
        if other != name:
            assert not [number for number in other_numbers if re.search(rf"\b{re.escape(number)}\b", card)]


@pytest.mark.parametrize("name", CARDS)
def test_limitations_and_citations(name):
    card = RENDERED[name]
    limitations = section(card, "Limitations")
    if name in RELEASED:
        assert "Skip tokens are off" in limitations and "`use_skip_tokens: false`" in limitations
    else:
        assert "Skip tokens follow this package's definition" in limitations
        assert "Not the authors' weights" in limitations
    citation = section(card, "Citation")
    assert citation.count("@article{") == 2
    assert "arXiv:2402.05935" in citation and "arXiv:2311.07575" in citation


@pytest.mark.parametrize("name", CARDS)
def test_every_card_shows_the_three_ways_to_load_it(name):
    blocks = python_blocks(RENDERED[name])
    assert any(all(part in block for part in ("import sphinx_x", "AutoModelForImageTextToText", "AutoProcessor",
                                              "apply_chat_template", ".generate(")) for block in blocks)
    assert any("import sphinx_x" in block and 'pipeline("image-text-to-text"' in block for block in blocks)
    assert any("trust_remote_code=True" in block and "import sphinx_x" not in block for block in blocks)


PACKAGE_SNIPPETS = [snippet for snippet in SNIPPETS if "trust_remote_code=True" not in snippet]
REMOTE_SNIPPETS = [snippet for snippet in SNIPPETS if "trust_remote_code=True" in snippet]


@pytest.mark.parametrize("snippet", PACKAGE_SNIPPETS, ids=snippet_id)
def test_package_snippets_run(snippet, converted_dir, fixture_dir, capsys):
    code = localise(snippet, converted_dir, fixture_dir / "inputs" / "synthetic_640x320.png")
    assert str(converted_dir) in code and "cocodataset" not in code
    namespace = {"__name__": "__card__"}
    exec(compile(code, "<model card>", "exec"), namespace)
    assert capsys.readouterr().out  # the answer was printed


REMOTE_RUNNER = textwrap.dedent(
    """
    for path in sys.argv[1:]:
        namespace = {"__name__": "__main__"}
        exec(compile(open(path).read(), path, "exec"), namespace)
        modules = [type(namespace[name]).__module__ for name in ("model", "processor")]
        assert all(module.startswith("transformers_modules") for module in modules), modules
    """
)


def test_remote_code_snippets_run_without_the_package(converted_dir, fixture_dir, tmp_path):
    scripts = []
    for index, snippet in enumerate(REMOTE_SNIPPETS):
        script = tmp_path / f"card_snippet_{index}.py"
        script.write_text(localise(snippet, converted_dir, fixture_dir / "inputs" / "synthetic_640x320.png"))
        scripts.append(str(script))
    assert scripts
    result = run_without_sphinx_x(REMOTE_RUNNER, *scripts, cwd=tmp_path, timeout=300)
    assert result.stdout.strip()
