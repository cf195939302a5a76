"""`sphinx-x train RECIPE.yaml`: one-stage SFT of a SPHINX-X model with TRL's `SFTTrainer`.

Runs the same in one process and under `accelerate launch` (DDP, FSDP, DeepSpeed: see `training/accelerate/`):

    accelerate launch --config_file training/accelerate/fsdp.yaml -m sphinx_x.training.train RECIPE.yaml
"""

import argparse
import json
import logging as std_logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging
from trl import SFTTrainer

from ..processors.processing_sphinx_x import STOP_STRING
from .collator import SKIP_REASONS, SkippedRecords, SphinxXDataCollator
from .data import load_mixture
from .models import freeze_vision_encoders, load_model_and_processor
from .recipe import VISION_ENCODERS, RecipeError, load_recipe, overrides_from_arguments


logger = logging.get_logger(__name__)

# A visual expert's parameters, by name: `model.convnext.` in the model, `...model.model.convnext.` under peft.
ENCODER_PARAMETER = re.compile(rf"(^|\.)model\.({'|'.join(VISION_ENCODERS)})\.")
# TRL's check that the assistant mask ends on the end-of-turn token accepts only an added-vocabulary token there; the
# SPHINX terminator "\n###" is plain text, so TRL warns "the model may not learn to stop" although it is trained.
TRL_STOP_TOKEN_WARNING = "The chat template does not include the assistant turn's end-of-turn token in the loss mask"


def terminator_in_assistant_mask(processor) -> bool:
    """Whether the assistant tokens of a rendered multi-turn chat end with the reference terminator `"\n###"`."""
    turn = [{"type": "text", "text": "dummy"}]
    messages = [{"role": role, "content": turn} for role in ("user", "assistant", "user")]
    rendered = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [token for token, keep in zip(rendered["input_ids"][0], rendered["assistant_masks"][0]) if keep]
    return processor.tokenizer.decode(masked).endswith(STOP_STRING)


def not_trl_stop_token_warning(record: std_logging.LogRecord) -> bool:
    """Logging filter: drop TRL's end-of-turn warning (matched inside: accelerate prefixes "[RANK n] ")."""
    return TRL_STOP_TOKEN_WARNING not in record.getMessage()


class SphinxXSFTTrainer(SFTTrainer):
    """`SFTTrainer` that can give trained visual encoders their own peak learning rate (as LLaVA's
    `mm_vision_tower_lr`); the schedule scales both alike. It silences TRL's end-of-turn warning only after checking
    that the processor's assistant mask does end with the SPHINX terminator."""

    def __init__(self, *args, vision_encoder_learning_rate: float | None = None, **kwargs):
        self.vision_encoder_learning_rate = vision_encoder_learning_rate
        trl_logger = std_logging.getLogger(SFTTrainer.__module__)
        processor = kwargs.get("processing_class")
        if processor is not None and terminator_in_assistant_mask(processor):
            trl_logger.addFilter(not_trl_stop_token_warning)
        try:
            super().__init__(*args, **kwargs)
        finally:
            trl_logger.removeFilter(not_trl_stop_token_warning)

    def create_optimizer(self, model=None):
        # By name, so that the trained copies peft keeps of encoders in `modules_to_save` count too.
        encoders = [parameter for name, parameter in self.model.named_parameters() if ENCODER_PARAMETER.search(name)]
        if self.vision_encoder_learning_rate == 0:  # kept as they are: no gradient is computed through them at all
            for parameter in encoders:
                parameter.requires_grad_(False)
        optimizer = super().create_optimizer(model)
        if self.vision_encoder_learning_rate in (None, 0):
            return optimizer
        encoder_parameters = {id(parameter) for parameter in encoders}
        groups, encoder_groups = [], []
        for group in optimizer.param_groups:  # weight decay / no decay, each split into the rest / encoders
            rest = [parameter for parameter in group["params"] if id(parameter) not in encoder_parameters]
            encoder = [parameter for parameter in group["params"] if id(parameter) in encoder_parameters]
            groups += [{**group, "params": rest}] if rest else []
            encoder_groups += [{**group, "params": encoder, "lr": self.vision_encoder_learning_rate}] if encoder else []
        if not encoder_groups:
            raise RecipeError(
                "`freeze.vision_encoder_learning_rate` found no encoder parameter in the optimizer (DeepSpeed and "
                "FSDP1 without use_orig_params flatten them): drop it there, or train the encoders at the main "
                "learning rate."
            )
        groups += encoder_groups
        optimizer.param_groups[:] = groups  # no step taken yet: the optimizer holds no state to move
        return optimizer


def is_complete_checkpoint(folder: Path) -> bool:
    """`Trainer` writes `trainer_state.json` last: a checkpoint without a readable one was cut short (a kill)."""
    try:
        json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def resume_checkpoint(requested, output_dir: str) -> str | None:
    """The checkpoint to resume from: the folder asked for (refused when incomplete), or for `True` the last complete
    `checkpoint-N` in `output_dir`, naming the incomplete ones passed over."""
    if requested is None or requested is False:
        return None
    if requested is not True:
        if not Path(requested).is_dir():
            raise RecipeError(f"No checkpoint folder at {requested}; pass an existing checkpoint-N folder.")
        if not is_complete_checkpoint(requested):
            raise RecipeError(
                f"{requested} is an incomplete checkpoint (no readable trainer_state.json: its run was stopped while "
                "writing it); resume from an earlier one."
            )
        return str(requested)
    folders = [path for path in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", path.name)]
    incomplete = []
    for folder in sorted(folders, key=lambda path: int(path.name.split("-")[1]), reverse=True):
        if is_complete_checkpoint(folder):
            if incomplete:
                logger.warning(f"Skipped incomplete checkpoint(s) {', '.join(incomplete)}; resuming from {folder}.")
            return str(folder)
        incomplete.append(folder.name)
    detail = f" (only incomplete ones: {', '.join(incomplete)})" if incomplete else ""
    raise RecipeError(f"No complete checkpoint to resume from in {output_dir}{detail}.")


@dataclass
class TrainResult:
    """What a recipe run produced: the final model (or adapter) and processor are in `output_dir`."""

    output_dir: str
    train_output: TrainOutput
    skipped: dict[str, int]  # records skipped by reason (train and eval data), over all processes and passes
    trainer: SFTTrainer


def load_start_adapter(model, folder) -> None:
    """Start the LoRA weights and `peft.modules_to_save` of the peft-wrapped `model` from the adapter saved in `folder`
    (`model.adapter`); the optimizer starts fresh. Modules the adapter lacks keep their base weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise RecipeError(f"`model.adapter`: {path} does not exist; give the folder a LoRA run saved its adapter in.")
    try:
        unexpected = set_peft_model_state_dict(model, load_file(path)).unexpected_keys
    except RuntimeError as error:  # a tensor of another shape (another `r`, another model)
        raise RecipeError(f"`model.adapter` {folder} does not fit this model and `peft` section: "
                          f"{str(error).splitlines()[-1].strip()}") from None
    if unexpected:
        raise RecipeError(f"`model.adapter` {folder} does not fit this model and `peft` section: {len(unexpected)} of "
                          f"its tensors have no place here (e.g. {unexpected[0]}).")


def train_from_recipe(path, overrides: dict | None = None) -> TrainResult:
    """Train as a recipe says (see `recipe.py` for its sections); `overrides` is a nested mapping merged on top.

    Model, processor and data come from the recipe; `SFTTrainer` runs with the SPHINX-X processor and a collator that
    skips bad records. LoRA starts from `model.adapter` when given. Resumes from `sft.resume_from_checkpoint` (a
    checkpoint folder, or `true` for the last complete one in `output_dir`). Saves the model (or the adapter) with the
    processor in `sft.output_dir`.
    """
    recipe = load_recipe(path, overrides)
    args = recipe.sft_config()
    checkpoint = resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    model_spec = recipe.model
    if checkpoint and recipe.peft is None:
        # `Trainer` reloads a checkpoint's tensors as stored, without the key conversions `save_pretrained` applied
        # (DINOv2's split projections, Mixtral's fused experts; transformers#48805), which would leave those weights
        # where the run started. A full fine-tuning checkpoint is a complete model folder: start from it.
        kept = {key: recipe.model[key] for key in ("dtype", "attn_implementation") if key in recipe.model}
        model_spec = {"path": checkpoint, **kept}
    set_seed(args.seed)  # before a from-scratch model or LoRA weights are initialised
    model, processor = load_model_and_processor(model_spec, recipe.peft_method)
    if "max_length" not in recipe.sft:  # records that do not fit the LLM's context are skipped
        args.max_length = model.config.text_config.max_position_embeddings
    if recipe.peft is None and not recipe.train_vision_encoders:
        freeze_vision_encoders(model)

    collator = SphinxXDataCollator(
        processor=processor,
        max_length=args.max_length,
        assistant_only_loss=args.assistant_only_loss,
        pad_to_multiple_of=args.pad_to_multiple_of,
        skipped=SkippedRecords(args.dataloader_multiprocessing_context),
        spelled_answers=re.compile(str(recipe.data["spelled_answers"])) if "spelled_answers" in recipe.data else None,
    )
    trainer = SphinxXSFTTrainer(
        model=model,
        args=args,
        train_dataset=load_mixture(recipe.data["train"]),
        eval_dataset=load_mixture(recipe.data["eval"]) if "eval" in recipe.data else None,
        processing_class=processor,
        data_collator=collator,
        peft_config=recipe.lora_config(),
        vision_encoder_learning_rate=recipe.vision_encoder_learning_rate,
    )
    if "adapter" in recipe.model:
        load_start_adapter(trainer.model, recipe.model["adapter"])
    train_output = trainer.train(resume_from_checkpoint=checkpoint)

    counts = trainer.accelerator.reduce(collator.skipped.counts.to(trainer.accelerator.device), reduction="sum")
    skipped = dict(zip(SKIP_REASONS, counts.tolist()))
    if sum(skipped.values()):
        logger.warning(f"Skipped {sum(skipped.values())} training record(s): {skipped}")
    metrics = {**train_output.metrics, **{f"skipped_{reason}": count for reason, count in skipped.items()}}
    train_output = TrainOutput(train_output.global_step, train_output.training_loss, metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.save_model(args.output_dir)
    return TrainResult(output_dir=args.output_dir, train_output=train_output, skipped=skipped, trainer=trainer)


def run_train_command(args: argparse.Namespace) -> TrainResult:
    """`sphinx-x train`: the arguments of `recipe.add_train_arguments`."""
    return train_from_recipe(args.recipe, overrides_from_arguments(args))


def main(argv: list[str] | None = None) -> int:
    """`python -m sphinx_x.training.train` (what `accelerate launch` runs) is `sphinx-x train`, errors included."""
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
