"""One-stage SFT with TRL on tiny random models: recipes, full fine-tuning, LoRA, resuming, the MoE auxiliary loss,
plain `SFTTrainer` use, and the accelerate configurations for FSDP and DeepSpeed."""

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from unittest import mock

import PIL.Image
import pytest
import torch
import yaml
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from test_data import COLOURS, SIZES, SMALL_GEOMETRY, write_colour_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

import sphinx_x.training
from sphinx_x.cli import add_train_arguments
from sphinx_x.cli import main as cli_main
from sphinx_x.training.data import MIXTURE_KEYS, SOURCE_KEYS
from sphinx_x.training.models import LLM_LINEAR_LAYERS, vision_encoders
from sphinx_x.training.recipe import (
    RecipeError,
    check_keys,
    load_recipe,
    overrides_from_arguments,
    parse_overrides,
    parse_recipe,
)
from sphinx_x.training.train import (
    TRL_STOP_TOKEN_WARNING,
    SphinxXSFTTrainer,
    terminator_in_assistant_mask,
    train_from_recipe,
)
from sphinx_x.training.train import main as train_main

from conftest import FIXTURE, make_tiny_model_and_processor


TRAINING = Path(sphinx_x.training.__file__).parent
# CPU settings shared by the runs below; recipes set the rest.
CPU_SFT = {"use_cpu": True, "bf16": False, "report_to": "none", "disable_tqdm": True, "logging_steps": 1,
           "save_strategy": "no", "per_device_train_batch_size": 4, "learning_rate": 3e-3, "max_length": 300}


def save_base_model(folder: Path, preset: str = "tiny-random"):
    """A tiny random SPHINX-X (small canvas) saved with its processor: the model a recipe fine-tunes."""
    model, processor = make_tiny_model_and_processor(preset, **SMALL_GEOMETRY)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def write_recipe(folder: Path, **sections) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def colour_messages(image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "What colour is the image?"}]}]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def field_default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def test_every_sft_config_field_is_accepted_and_unknown_keys_are_refused(tmp_path):
    every_field = {field.name: field_default(field) for field in dataclasses.fields(SFTConfig) if field.init}
    base = {"model": {"path": "m"}, "data": {"train": {"sources": [{"path": "d.json"}]}}}
    sft = {**every_field, "output_dir": str(tmp_path), "use_cpu": True, "max_length": 2048, "warmup_steps": 7}
    config = parse_recipe({**base, "sft": sft}).sft_config()
    assert isinstance(config, SFTConfig)
    assert (config.max_length, config.warmup_steps, config.use_cpu) == (2048, 7, True)

    # YAML reads exponents as floats and `no` as a word (YAML 1.2); labels follow the reference unless the recipe
    # says otherwise.
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {{path: m}}\ndata: {{train: d.yaml}}\nsft: {{output_dir: {tmp_path}, use_cpu: true, "
                    "learning_rate: 2e-5, save_strategy: no}\n")
    config = load_recipe(path).sft_config()
    assert config.learning_rate == 2e-5 and config.assistant_only_loss and config.save_strategy == "no"
    overridden = load_recipe(path, parse_overrides(["sft.learning_rate=1e-3", "sft.assistant_only_loss=false",
                                                    "sft.eval_strategy=no"]))
    assert overridden.sft_config().learning_rate == 1e-3 and not overridden.sft_config().assistant_only_loss
    assert overridden.sft_config().eval_strategy == "no"

    with pytest.raises(RecipeError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\).*Valid keys:.*max_len"):
        parse_recipe({**base, "sft": {"learning_rat": 1e-4}})
    with pytest.raises(RecipeError, match="Unknown key.*`peft`.*'rank'"):
        parse_recipe({**base, "sft": {}, "peft": {"method": "lora", "rank": 8}})
    with pytest.raises(RecipeError, match="exactly one of `path`"):
        parse_recipe({"model": {"path": "m", "preset": "tiny-random"}, "data": base["data"], "sft": {}})
    with pytest.raises(RecipeError, match="Unknown key.*`recipe`.*'trainer'"):
        parse_recipe({**base, "sft": {}, "trainer": {}})
    with pytest.raises(RecipeError, match=r"`data.spelled_answers` is not a regular expression.*'\[A-Z'"):
        parse_recipe({**base, "data": {"train": "d.yaml", "spelled_answers": "[A-Z"}, "sft": {}})


def test_command_line_arguments_become_overrides():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["r.yaml", "--set", "sft.max_steps=10", "--set", "peft.target_modules=[q_proj, v_proj]",
                              "--set", "sft.learning_rate=1e-4", "--output-dir", "out", "--resume-from-checkpoint"])
    assert args.recipe == "r.yaml"
    assert overrides_from_arguments(args) == {
        "sft": {"max_steps": 10, "learning_rate": 1e-4, "output_dir": "out", "resume_from_checkpoint": True},
        "peft": {"target_modules": ["q_proj", "v_proj"]},
    }
    args = parser.parse_args(["r.yaml", "--resume-from-checkpoint", "out/checkpoint-20"])
    assert overrides_from_arguments(args) == {"sft": {"resume_from_checkpoint": "out/checkpoint-20"}}
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["sft.max_steps"])
    with pytest.raises(RecipeError, match=r"data.spelled_answers is not YAML .*quote it"):
        parse_overrides(["data.spelled_answers=[A-Z]{4}"])
    assert parse_overrides(['data.spelled_answers="[A-Z]{4}"']) == {"data": {"spelled_answers": "[A-Z]{4}"}}


def test_shipped_recipes_and_mixtures_are_valid():
    recipes = sorted((TRAINING / "recipes").glob("*.yaml"))
    assert {path.stem for path in recipes} >= {
        "sphinx-x-tiny", "sphinx-x-internlm2-7b", "sphinx-x-llama2-13b", "sphinx-x-moe", "sphinx-x-tiny-lora",
        "sphinx-x-llama2-13b-qlora",
    }
    for path in recipes:
        recipe = load_recipe(path, {"sft": {"use_cpu": True}})  # the recipes are for GPUs (bf16)
        assert isinstance(recipe.sft_config(), SFTConfig), path
        lora = recipe.lora_config()
        if lora is not None:
            assert lora.target_modules == LLM_LINEAR_LAYERS
        mixture = recipe.data["train"]  # inline, or a mixture file
        if not isinstance(mixture, dict):
            mixture = yaml.safe_load((TRAINING.parent / mixture).read_text())
        check_keys("data mixture", mixture, MIXTURE_KEYS)
        for source in mixture["sources"]:
            check_keys("data source", source, SOURCE_KEYS)

    # The demo's codes are spelled: exactly the code alphabet's 4-character strings match.
    from sphinx_x.training.synthetic.ocr import CODE_ALPHABET

    spelled = re.compile(load_recipe(TRAINING / "recipes" / "sphinx-x-demo-gates.yaml").data["spelled_answers"])
    characters = {chr(code) for code in range(32, 127) if spelled.fullmatch(chr(code) * 4)}
    assert characters == set(CODE_ALPHABET) and not spelled.fullmatch("ABC") and not spelled.fullmatch("ABCDE")


ACCELERATE = TRAINING / "accelerate"


def test_fsdp_config_builds_its_plugin_and_wraps_sphinx_blocks():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    # As `accelerate launch` does: config file -> launcher arguments -> environment -> plugin.
    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE / "fsdp.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    # The auto-wrap policy finds the block classes of a SPHINX-X model: its `_no_split_modules`, gathered from the
    # encoders and the LLM it holds.
    model, _ = make_tiny_model_and_processor(**SMALL_GEOMETRY)
    plugin.set_auto_wrap_policy(model)
    assert set(plugin.transformer_cls_names_to_wrap) == model._no_split_modules
    assert {"LlamaDecoderLayer", "ConvNextStage", "Dinov2Layer"} <= model._no_split_modules


def test_deepspeed_zero3_config_builds_its_plugin():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / "deepspeed_zero3.yaml"))
    assert config.distributed_type == "DEEPSPEED"
    ds_file = TRAINING.parent / config.deepspeed_config["deepspeed_config_file"]
    assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == 3
    pytest.importorskip("deepspeed", reason="DeepSpeedPlugin needs deepspeed (not installed here)")
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=str(ds_file), zero3_init_flag=config.deepspeed_config["zero3_init_flag"])
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag


def test_full_fine_tuning_end_to_end(tmp_path):
    """A recipe run: loss falls, bad records are skipped and counted, only the encoders stay fixed, and the saved
    folder reloads and generates."""
    base = save_base_model(tmp_path / "base")
    source = write_colour_dataset(tmp_path / "data", bad_records=True)
    recipe = write_recipe(
        tmp_path,
        model={"path": str(tmp_path / "base")},
        data={"train": {"sources": [source]}},
        sft={**CPU_SFT, "output_dir": str(tmp_path / "out"), "num_train_epochs": 3},
    )
    result = train_from_recipe(recipe)

    assert result.skipped == {"malformed": 3, "no_assistant_turn": 3, "missing_image": 3, "corrupt_image": 3,
                              "too_long": 3, "failed": 0}  # one of each, every pass
    assert result.train_output.metrics["skipped_too_long"] == 3
    assert json.loads((tmp_path / "out" / "train_results.json").read_text())["skipped_corrupt_image"] == 3
    curve = losses(result.trainer)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 1.0, curve

    trained = result.trainer.model
    assert trained.config.text_config._attn_implementation == "sdpa"  # no flash-attn here
    before, after = base.state_dict(), trained.state_dict()
    for name in after:
        changed = not torch.equal(before[name], after[name])
        if name.startswith(("model.convnext.", "model.dinov2.")):
            assert not changed, name
    for name in ("model.visual_projector.linear.weight", "model.image_tags.start", "model.image_tags.skip",
                 "lm_head.weight", "model.language_model.layers.0.mlp.up_proj.weight"):
        assert not torch.equal(before[name], after[name]), name

    out = tmp_path / "out"
    assert {"modeling_sphinx_x.py", "processing_sphinx_x.py", "chat_template.jinja"} <= set(os.listdir(out))
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor.apply_chat_template(colour_messages(PIL.Image.new("RGB", (90, 30), COLOURS["blue"])),
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, trained.eval()(**inputs).logits, atol=1e-5)
        output = model.generate(**inputs, max_new_tokens=4)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_lora_adapter_saves_reloads_and_merges(tmp_path):
    """LoRA on a streamed source with an evaluation set; the adapter reloads on the base model and merges into it."""
    save_base_model(tmp_path / "base")
    source = write_colour_dataset(tmp_path / "data")
    recipe = write_recipe(
        tmp_path,
        model={"path": str(tmp_path / "base")},
        data={"train": {"sources": [{**source, "streaming": True}]},
              "eval": {"sources": [{**source, "max_samples": 4}]}},
        peft={"method": "lora", "r": 8, "lora_alpha": 16, "modules_to_save": ["visual_projector"]},
        sft={**CPU_SFT, "output_dir": str(tmp_path / "out"), "max_steps": 4, "learning_rate": 1e-2,
             "eval_strategy": "steps", "eval_steps": 4},
    )
    result = train_from_recipe(recipe)
    assert [entry["eval_loss"] for entry in result.trainer.state.log_history if "eval_loss" in entry]
    adapted = [name for name, _ in result.trainer.model.named_modules() if name.endswith("lora_A")]
    assert adapted and all(".language_model.layers." in name for name in adapted)  # never the visual encoders
    assert any("self_attn.q_proj" in name for name in adapted) and any("mlp.down_proj" in name for name in adapted)

    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json"} <= set(os.listdir(out))
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor.apply_chat_template(colour_messages(PIL.Image.new("RGB", (30, 90), COLOURS["red"])),
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    base = AutoModelForImageTextToText.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        adapted_model = PeftModel.from_pretrained(base, out).eval()
        adapter_logits = adapted_model(**inputs).logits
        merged = adapted_model.merge_and_unload()
        merged_logits = merged(**inputs).logits
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-3)  # the adapter learned something
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5)
    assert type(merged).__name__ == "SphinxXForConditionalGeneration"


def test_lora_starts_from_a_saved_adapter(tmp_path):
    """`model.adapter`: a second run starts from the first run's LoRA and saved modules (at learning rate 0 it saves
    them unchanged); a folder without an adapter, or one of another rank, is one clear error."""
    save_base_model(tmp_path / "base")
    source = write_colour_dataset(tmp_path / "data")
    peft = {"method": "lora", "r": 8, "lora_alpha": 16, "modules_to_save": ["visual_projector"]}

    def run(name: str, learning_rate: float, **model):
        recipe = write_recipe(tmp_path, model={"path": str(tmp_path / "base"), **model},
                              data={"train": {"sources": [source]}}, peft=peft,
                              sft={**CPU_SFT, "output_dir": str(tmp_path / name), "max_steps": 2,
                                   "learning_rate": learning_rate})
        train_from_recipe(recipe)
        return load_file(tmp_path / name / "adapter_model.safetensors")

    first = run("first", 1e-2)
    started = run("second", 0.0, adapter=str(tmp_path / "first"))
    assert set(started) == set(first) and any(".visual_projector." in key for key in first)
    for key, tensor in first.items():
        torch.testing.assert_close(started[key], tensor, rtol=0, atol=0)
    fresh = run("fresh", 0.0)  # without `model.adapter`: new LoRA weights
    assert not all(torch.equal(fresh[key], first[key]) for key in first)

    with pytest.raises(RecipeError, match=r"`model.adapter`: .*adapter_model.safetensors does not exist"):
        run("missing", 0.0, adapter=str(tmp_path / "base"))
    peft["r"] = 4
    with pytest.raises(RecipeError, match="does not fit this model and `peft` section"):
        run("other-rank", 0.0, adapter=str(tmp_path / "first"))


def test_an_adapter_needs_peft():
    recipe = {"model": {"path": "m", "adapter": "a"}, "data": {"train": {"sources": [{"path": "d.json"}]}},
              "sft": {"output_dir": "o"}}
    with pytest.raises(RecipeError, match="`model.adapter` starts LoRA from a saved adapter: the recipe needs a"):
        parse_recipe(recipe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_qlora_without_cuda_is_a_clear_error(tmp_path):
    save_base_model(tmp_path / "base")
    recipe = write_recipe(
        tmp_path,
        model={"path": str(tmp_path / "base")},
        data={"train": {"sources": [write_colour_dataset(tmp_path / "data")]}},
        peft={"method": "qlora"},
        sft={**CPU_SFT, "output_dir": str(tmp_path / "out")},
    )
    with pytest.raises(RecipeError, match="CUDA GPU.*bitsandbytes"):
        train_from_recipe(recipe)


def test_resume_from_checkpoint_of_a_from_scratch_model(tmp_path):
    """A preset trained from scratch, encoders included; resuming at step 2 ends where the uninterrupted run ends."""
    source = write_colour_dataset(tmp_path / "data")
    sections = {
        "model": {"preset": "tiny-random", "tokenizer": str(FIXTURE / "checkpoint"),
                  "config_overrides": SMALL_GEOMETRY},
        "data": {"train": {"sources": [source]}},
        "freeze": {"vision_encoders": False},
        "sft": {**CPU_SFT, "output_dir": str(tmp_path / "full"), "max_steps": 4, "per_device_train_batch_size": 2,
                "save_strategy": "steps", "save_steps": 2, "activation_checkpointing": False},
    }
    full = train_from_recipe(write_recipe(tmp_path, **sections))
    checkpoint = tmp_path / "full" / "checkpoint-2"
    # Checkpoints are model folders with the remote code, so they load without this package too.
    assert {"modeling_sphinx_x.py", "configuration_sphinx_x.py", "processor_config.json"} <= set(os.listdir(checkpoint))
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}

    sections["sft"]["output_dir"] = str(tmp_path / "resumed")
    resumed = train_from_recipe(write_recipe(tmp_path, **sections),
                                {"sft": {"resume_from_checkpoint": str(checkpoint)}})
    assert resumed.train_output.global_step == 4
    assert losses(resumed.trainer) == pytest.approx(losses(full.trainer), rel=1e-4)  # steps 1-2 from the checkpoint
    final, again = full.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    for name in final:
        assert torch.allclose(final[name], again[name], atol=1e-5), name
    at_step_2 = AutoModelForImageTextToText.from_pretrained(checkpoint).state_dict()
    assert not torch.equal(at_step_2["model.convnext.model.embeddings.patch_embeddings.weight"],
                           final["model.convnext.model.embeddings.patch_embeddings.weight"])  # encoders train


def test_vision_encoders_train_at_their_own_learning_rate(tmp_path):
    sections = {
        "model": {"preset": "tiny-random", "tokenizer": str(FIXTURE / "checkpoint"),
                  "config_overrides": SMALL_GEOMETRY},
        "data": {"train": {"sources": [write_colour_dataset(tmp_path / "data")]}},
        "freeze": {"vision_encoders": False, "vision_encoder_learning_rate": 3e-4},
        "sft": {**CPU_SFT, "output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 2,
                "learning_rate": 3e-3, "lr_scheduler_type": "linear", "activation_checkpointing": False},
    }
    trainer = train_from_recipe(write_recipe(tmp_path, **sections)).trainer
    model = trainer.model
    encoder_ids = {id(parameter) for encoder in vision_encoders(model) for parameter in encoder.parameters()}
    trained = {id(parameter) for parameter in model.parameters() if parameter.requires_grad}
    in_groups = {}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            in_groups[id(parameter)] = group["initial_lr"]
    assert set(in_groups) == trained and encoder_ids <= trained  # every trained tensor once, encoders included
    assert {in_groups[key] for key in encoder_ids} == {3e-4}
    assert {lr for key, lr in in_groups.items() if key not in encoder_ids} == {3e-3}
    ratios = {group["lr"] / group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert len(ratios) == 1  # one schedule, scaled


def test_lora_keeps_a_saved_encoder_fixed_at_learning_rate_zero(tmp_path):
    """An encoder in `peft.modules_to_save` travels with the adapter; at `vision_encoder_learning_rate: 0` it stays
    exactly as the base has it while the projector trains (the demo model's pretrained reader), and no gradient is
    computed for it (nothing of it requires one, nothing of it is in the optimizer)."""
    base = save_base_model(tmp_path / "base")
    recipe = write_recipe(
        tmp_path,
        model={"path": str(tmp_path / "base")},
        data={"train": {"sources": [write_colour_dataset(tmp_path / "data")]}},
        freeze={"vision_encoder_learning_rate": 0.0},
        peft={"method": "lora", "r": 8, "lora_alpha": 16, "modules_to_save": ["visual_projector", "convnext"]},
        sft={**CPU_SFT, "output_dir": str(tmp_path / "out"), "max_steps": 3, "learning_rate": 1e-2,
             "weight_decay": 0.1},
    )
    trainer = train_from_recipe(recipe).trainer
    reader = [parameter for name, parameter in trainer.model.named_parameters() if ".convnext." in name]
    assert reader and not any(parameter.requires_grad for parameter in reader)
    optimized = {id(parameter) for group in trainer.optimizer.param_groups for parameter in group["params"]}
    assert not optimized & {id(parameter) for parameter in reader}
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    convnext = {key: value for key, value in saved.items() if ".convnext." in key}
    projector = {key: value for key, value in saved.items() if ".visual_projector." in key}
    assert convnext and projector
    reference = base.model.convnext.state_dict()
    for key, value in convnext.items():
        assert torch.equal(value, reference[key.removeprefix("base_model.model.model.convnext.")]), key
    trained = projector[next(key for key in projector if key.endswith("linear.weight"))]
    assert not torch.equal(trained, base.model.visual_projector.linear.weight)


def test_vision_encoder_learning_rate_needs_trained_encoders():
    base = {"model": {"path": "m"}, "data": {"train": {"sources": [{"path": "d.json"}]}}, "sft": {"output_dir": "o"}}
    with pytest.raises(RecipeError, match="vision_encoders: false"):
        parse_recipe({**base, "freeze": {"vision_encoder_learning_rate": 1e-4}})
    with pytest.raises(RecipeError, match="must be a number"):
        parse_recipe({**base, "freeze": {"vision_encoders": False, "vision_encoder_learning_rate": "fast"}})
    with pytest.raises(RecipeError, match="modules_to_save"):  # LoRA that does not save an encoder
        parse_recipe({**base, "freeze": {"vision_encoder_learning_rate": 0.0},
                      "peft": {"method": "lora", "modules_to_save": ["visual_projector"]}})
    parse_recipe({**base, "freeze": {"vision_encoder_learning_rate": 0.0},
                  "peft": {"method": "lora", "modules_to_save": ["visual_projector", "convnext"]}})


def test_mixtral_router_aux_loss_during_training(tmp_path):
    save_base_model(tmp_path / "base", preset="tiny-random-moe")
    recipe = write_recipe(
        tmp_path,
        model={"path": str(tmp_path / "base")},
        data={"train": {"sources": [write_colour_dataset(tmp_path / "data")]}},
        sft={**CPU_SFT, "output_dir": str(tmp_path / "out"), "max_steps": 2, "router_aux_loss_coef": 0.05,
             "activation_checkpointing": False},
    )
    result = train_from_recipe(recipe)
    trainer, model = result.trainer, result.trainer.model
    aux = [entry["aux_loss"] for entry in trainer.state.log_history if "aux_loss" in entry]
    assert len(aux) == 2 and all(value > 0 for value in aux)
    assert model.config.text_config.output_router_logits and model.config.text_config.router_aux_loss_coef == 0.05

    # TRL's fused loss and the model's own loss agree: next-token loss + 0.05 x load-balancing loss.
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(4)])
    with torch.no_grad():
        fused = trainer.compute_loss(model, dict(batch))
        own = model(**batch)
    assert own.aux_loss > 0
    assert torch.allclose(fused, own.loss, atol=1e-5)


def test_plain_trl_sft_trainer(tmp_path):
    """`SFTTrainer(model, processing_class=processor, ...)` on `messages` + `images` trains the reference targets."""
    model, processor = make_tiny_model_and_processor(**SMALL_GEOMETRY)
    rows = [
        {"messages": [{"role": "user", "content": "What colour is the image?"},
                      {"role": "assistant", "content": f"It is {name}."}],
         "images": [PIL.Image.new("RGB", size, rgb)]}
        for name, rgb in COLOURS.items() for size in SIZES
    ]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, max_steps=8,
                     per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, use_cpu=True, bf16=False,
                     report_to="none", disable_tqdm=True, activation_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer.train()
    curve = losses(trainer)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.5, curve

    # Full-sequence labels (`assistant_only_loss=False`) hold image placeholder ids, outside the vocabulary. TRL's
    # fused LM head scores labels without the model's forward; the model drops those positions before any forward.
    batch = DataCollatorForVisionLanguageModeling(processor=processor)([dict(row) for row in rows[:2]])
    targets = batch["labels"][:, 1:]
    assert (targets == processor.image_token_id).any()
    with torch.no_grad():
        fused = trainer.model(**batch, fused_lm_head=True)
        own = trainer.model(**batch)
    expected = (targets != -100) & (targets != processor.image_token_id)
    assert torch.equal(fused.label_mask, expected)
    assert torch.allclose(fused.loss, own.loss, atol=1e-5)


def test_trl_end_of_turn_false_alarm_is_silenced_only_when_the_terminator_is_trained(tmp_path, caplog):
    """TRL wants an added-vocabulary token at the end of the assistant mask and warns "the model may not learn to
    stop" for SPHINX's plain-text "\\n###"; our trainer checks the mask itself before dropping that one warning."""
    model, processor = make_tiny_model_and_processor(**SMALL_GEOMETRY)
    rows = [{"messages": [{"role": "user", "content": "What colour is the image?"},
                          {"role": "assistant", "content": "It is red."}],
             "images": [PIL.Image.new("RGB", (64, 32), COLOURS["red"])]}]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, use_cpu=True, bf16=False,
                     report_to="none", activation_checkpointing=False)

    def warned(trainer_class, **kwargs) -> bool:
        caplog.clear()
        trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                      **kwargs)
        return any(TRL_STOP_TOKEN_WARNING in record.getMessage() for record in caplog.records)

    assert terminator_in_assistant_mask(processor)
    assert warned(SFTTrainer)  # TRL's check still fires, with the message text we match
    assert not warned(SphinxXSFTTrainer)

    # A template that leaves the terminator out of the generation block is a real problem: the warning stays.
    processor.chat_template = processor.chat_template.replace(
        "{%- generation -%}{{- ' ' + text_of(message) + '\\n###' -}}{%- endgeneration -%}",
        "{%- generation -%}{{- ' ' + text_of(message) -}}{%- endgeneration -%}{{- '\\n###' -}}",
    )
    assert not terminator_in_assistant_mask(processor)
    assert warned(SphinxXSFTTrainer)


def test_module_entry_point_reports_recipe_errors_like_the_cli(tmp_path, capsys):
    # `accelerate launch -m sphinx_x.training.train` runs `main` on every rank: one clean line, no traceback.
    assert train_main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_train_without_the_training_extra_names_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError, as without the extra
    monkeypatch.delitem(sys.modules, "sphinx_x.training.train")
    assert cli_main(["train", "recipe.yaml"]) == 2
    assert 'pip install "sphinx-x[train]"' in capsys.readouterr().err
