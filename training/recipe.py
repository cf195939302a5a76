"""Training recipes: one YAML file with `model`, `data`, `peft`, `freeze` and `sft` sections.

```yaml
model:                      # exactly one of `path` and `preset`
  path: checkpoints/sphinx-x-tiny     # a model folder or Hub id (e.g. from `sphinx-x convert assemble`)
  preset: tiny-random                 # or a from-scratch model from a preset ...
  tokenizer: path/to/tokenizer        # ... with this tokenizer (a folder, Hub id, or a folder with tokenizer.model)
  config_overrides: {}                # preset only: SphinxXConfig fields
  dtype: float32                      # float32 | bfloat16 | float16 | auto
  attn_implementation: auto           # the LLM's; auto: flash_attention_2 with flash-attn and CUDA, else sdpa
  adapter: runs/earlier-run           # with `peft`: start from this saved adapter's weights (a fresh optimizer)
data:
  train: mixtures/sft.yaml            # a mixture file, or the mixture inline (see `data.load_mixture`)
  eval: {sources: [{path: val.json, root: images/}]}
  spelled_answers: "[A-Z0-9]{4}"     # optional: answers matching this whole are trained one character per token
freeze:
  vision_encoders: true               # full fine-tuning: train the projector, image tags, skip token and LLM only
  vision_encoder_learning_rate: 2.0e-6  # the trained encoders' own peak learning rate (0 keeps them as they are)
peft:                                 # optional: `method` (lora | qlora) and any `peft.LoraConfig` field
  method: lora
  r: 16
sft:                                  # any `trl.SFTConfig` field, passed through
  output_dir: runs/sphinx-x-tiny
  learning_rate: 2.0e-5
```
"""

import dataclasses
import difflib
import re
from pathlib import Path

import yaml


SECTIONS = {"model": True, "data": True, "sft": True, "peft": False, "freeze": False}
MODEL_KEYS = {"path", "preset", "tokenizer", "config_overrides", "dtype", "attn_implementation", "adapter"}
DATA_KEYS = {"train", "eval", "spelled_answers"}
FREEZE_KEYS = {"vision_encoders", "vision_encoder_learning_rate"}
PEFT_METHODS = ("lora", "qlora")
DTYPES = ("float32", "bfloat16", "float16", "auto")
# `SphinxXModel`'s visual experts and its character reader (trained, frozen and saved alike)
VISION_ENCODERS = ("clip", "convnext", "dinov2", "qformer", "char_reader", "place_reader")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key and what would be valid."""


class RecipeLoader(yaml.SafeLoader):
    """Scalars as YAML 1.2 and JSON read them: YAML 1.1 reads `2e-5` as a string and `no` / `on` as booleans, where
    recipes mean the float and the words (`save_strategy: no`)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.load(handle, Loader=RecipeLoader)
        except yaml.YAMLError as error:
            raise RecipeError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path} must hold a YAML mapping, got {type(content).__name__}.")
    return content


def parse_value(text: str):
    """A command-line value read as recipe YAML: `1e-4` -> 1e-4, `true` -> True, `[a, b]` -> list."""
    return yaml.load(text, Loader=RecipeLoader)


def check_keys(section: str, given, valid) -> None:
    """Refuse keys a section does not know, naming near misses and every valid key."""
    if not isinstance(given, dict):
        raise RecipeError(f"`{section}` must be a mapping, got {type(given).__name__}.")
    unknown = sorted(set(given) - set(valid))
    if unknown:
        hints = [f"{key!r} (did you mean {match[0]!r}?)" if (match := difflib.get_close_matches(key, valid, 1)) else
                 repr(key) for key in unknown]
        raise RecipeError(
            f"Unknown key(s) in `{section}`: {', '.join(hints)}. Valid keys: {', '.join(sorted(valid))}."
        )


def deep_merge(base: dict, overrides: dict) -> dict:
    """`overrides` on top of `base`; mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def sft_fields() -> set[str]:
    from trl import SFTConfig

    return {field.name for field in dataclasses.fields(SFTConfig) if field.init}


def lora_fields() -> set[str]:
    from peft import LoraConfig

    return {field.name for field in dataclasses.fields(LoraConfig) if field.init}


@dataclasses.dataclass
class Recipe:
    model: dict
    data: dict
    sft: dict
    peft: dict | None = None
    freeze: dict = dataclasses.field(default_factory=dict)

    @property
    def peft_method(self) -> str | None:
        return None if self.peft is None else self.peft["method"]

    @property
    def train_vision_encoders(self) -> bool:
        return not self.freeze.get("vision_encoders", True)

    @property
    def vision_encoder_learning_rate(self) -> float | None:
        return self.freeze.get("vision_encoder_learning_rate")

    def sft_config(self):
        """The `SFTConfig` of every key of the `sft` section, as given. Labels follow the reference unless the recipe
        says otherwise: only assistant answers and their terminator (`assistant_only_loss`)."""
        from trl import SFTConfig

        return SFTConfig(**{"assistant_only_loss": True, **self.sft})

    def lora_config(self):
        """The `LoraConfig` of the `peft` section, or `None`. Adapters go on the LLM's linear layers by default and
        never on the visual encoders (`all-linear` or a list of names such as `q_proj` would also match CLIP)."""
        if self.peft is None:
            return None
        from peft import LoraConfig

        from .models import LLM_LINEAR_LAYERS, VISION_ENCODER_MODULES

        options = {key: value for key, value in self.peft.items() if key != "method"}
        options.setdefault("target_modules", LLM_LINEAR_LAYERS)
        options.setdefault("exclude_modules", VISION_ENCODER_MODULES)
        options.setdefault("task_type", "CAUSAL_LM")
        return LoraConfig(**options)


def parse_recipe(content: dict) -> Recipe:
    """Validate a recipe mapping; every problem is a `RecipeError` naming the key."""
    check_keys("recipe", content, SECTIONS)
    missing = [name for name, required in SECTIONS.items() if required and name not in content]
    if missing:
        raise RecipeError(f"The recipe lacks the section(s): {', '.join(missing)}.")

    model = content["model"]
    check_keys("model", model, MODEL_KEYS)
    if ("path" in model) == ("preset" in model):
        raise RecipeError("`model` needs exactly one of `path` (a model folder or Hub id) and `preset` (from scratch).")
    if "preset" in model and "tokenizer" not in model:
        raise RecipeError("A `model.preset` (from scratch) needs `model.tokenizer`: a tokenizer folder or Hub id.")
    if "path" in model and {"tokenizer", "config_overrides"} & set(model):
        raise RecipeError("`model.tokenizer` and `model.config_overrides` apply to a `model.preset` only.")
    if model.get("dtype", "float32") not in DTYPES:
        raise RecipeError(f"`model.dtype` must be one of {', '.join(DTYPES)}, got {model['dtype']!r}.")

    data = content["data"]
    check_keys("data", data, DATA_KEYS)
    if "train" not in data:
        raise RecipeError("`data` needs `train`: a mixture file or an inline mapping with `sources`.")
    if "spelled_answers" in data:
        try:
            re.compile(str(data["spelled_answers"]))
        except re.error as error:
            raise RecipeError(f"`data.spelled_answers` is not a regular expression ({error}): "
                              f"{data['spelled_answers']!r}.") from None

    freeze = content.get("freeze") or {}
    check_keys("freeze", freeze, FREEZE_KEYS)
    peft = content.get("peft")
    if "vision_encoder_learning_rate" in freeze:
        saved_encoders = set((peft or {}).get("modules_to_save") or []) & set(VISION_ENCODERS)
        if freeze.get("vision_encoders", True) is not False and not saved_encoders:
            raise RecipeError("`freeze.vision_encoder_learning_rate` applies to trained encoders: set "
                              "`freeze.vision_encoders: false` too (or, with `peft`, list the encoders in "
                              "`peft.modules_to_save`), or drop the learning rate.")
        if not isinstance(freeze["vision_encoder_learning_rate"], (int, float)):
            raise RecipeError("`freeze.vision_encoder_learning_rate` must be a number, got "
                              f"{freeze['vision_encoder_learning_rate']!r}.")

    if "adapter" in model and peft is None:
        raise RecipeError("`model.adapter` starts LoRA from a saved adapter: the recipe needs a `peft` section.")
    if peft is not None:
        check_keys("peft", peft, lora_fields() | {"method"})
        if peft.get("method") not in PEFT_METHODS:
            raise RecipeError(f"`peft.method` must be one of {', '.join(PEFT_METHODS)}, got {peft.get('method')!r}.")
        if "preset" in model:
            raise RecipeError("LoRA and QLoRA adapt a trained model: set `model.path`, not `model.preset`.")
        if freeze.get("vision_encoders") is False:
            raise RecipeError(
                "With `peft`, only adapters and `peft.modules_to_save` train: list the encoders there instead of "
                "setting `freeze.vision_encoders: false`."
            )

    sft = content["sft"]
    check_keys("sft", sft, sft_fields())
    return Recipe(model=model, data=data, sft=sft, peft=peft, freeze=freeze)


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read a recipe file, apply `overrides` (a nested mapping, e.g. `{"sft": {"max_steps": 10}}`), validate."""
    return parse_recipe(deep_merge(load_yaml(path), overrides or {}))


def parse_overrides(assignments: list[str]) -> dict:
    """`["sft.learning_rate=1e-4", "peft.r=8"]` -> `{"sft": {"learning_rate": 1e-4}, "peft": {"r": 8}}`."""
    overrides: dict = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise RecipeError(f"Overrides are KEY=VALUE with a dotted KEY (e.g. sft.max_steps=10), got {assignment!r}.")
        *parents, leaf = key.split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        try:
            target[leaf] = parse_value(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise RecipeError(f"The value of {key} is not YAML ({problem}): {value!r}; quote it, e.g. "
                              f"{key}='\"{value}\"'.") from None
    return overrides


def overrides_from_arguments(args) -> dict:
    """The overrides that the arguments of `sphinx-x train` (`cli.add_train_arguments`) ask for."""
    overrides = parse_overrides(args.overrides)
    if args.output_dir is not None:
        overrides.setdefault("sft", {})["output_dir"] = args.output_dir
    if args.resume_from_checkpoint is not None:
        overrides.setdefault("sft", {})["resume_from_checkpoint"] = args.resume_from_checkpoint
    return overrides


__all__ = [
    "Recipe",
    "RecipeError",
    "check_keys",
    "load_recipe",
    "load_yaml",
    "overrides_from_arguments",
    "parse_overrides",
    "parse_recipe",
]
