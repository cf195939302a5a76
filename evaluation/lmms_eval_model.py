"""The `sphinx_x` model of lmms-eval: `lmms-eval --model sphinx_x --model_args pretrained=FOLDER_OR_HUB_ID`.

lmms-eval finds it through the `lmms_eval.models` entry point of this package (`manifest`), so it works once
sphinx-x and lmms-eval are installed side by side; nothing is patched into lmms-eval. Prompts go through the SPHINX
chat template (`### Human: ... ### Assistant:`), generation is greedy unless the task asks for a temperature, and
answers are cut at the reference terminator and at the task's `until` strings.
"""

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from ..cli import load_model
from .runner import build_inputs, generate_answers
from .task import Sample


def manifest() -> ModelManifest:
    """The entry point lmms-eval's model registry loads (group `lmms_eval.models`)."""
    return ModelManifest(model_id="sphinx_x", simple_class_path="sphinx_x.evaluation.lmms_eval_model.SphinxX")


class SphinxX(lmms):
    """SPHINX-X for lmms-eval's generation (`generate_until`) and likelihood (`loglikelihood`) tasks.

    Args:
        pretrained (`str`, *optional*): model folder or Hub id; the embedded demo model when left out.
        device (`str`): where to run ("cpu", "cuda", "cuda:0"); default cuda when available.
        dtype (`str`): "float32", "bfloat16" or "float16".
        batch_size (`int`): questions per generate call.
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str | None = None, dtype: str = "float32",
                 batch_size: int | str = 1, **kwargs):
        super().__init__()
        unknown = {key for key in kwargs if key != "max_batch_size"}  # lmms-eval passes max_batch_size to all
        if unknown:
            raise ValueError(f"sphinx_x model_args: unknown {sorted(unknown)}; use pretrained, device, dtype, "
                             "batch_size.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_model(pretrained, dtype, device)
        self.batch_size = int(batch_size)

    def question(self, request: Instance, suffix: str = "") -> Sample:
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [visual for visual in visuals or [] if visual is not None]
        if len(visuals) > 1:
            raise ValueError(f"{task}: SPHINX-X answers about one image per question, this one has {len(visuals)}.")
        return Sample(image=visuals[0].convert("RGB") if visuals else None, question=context, reference=None,
                      suffix=suffix)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        progress = tqdm(total=len(requests), desc="sphinx_x", unit="sample", disable=self.rank != 0)
        start = 0
        while start < len(requests):
            settings = requests[start].args[1]
            batch = [requests[start]]
            while (len(batch) < self.batch_size and start + len(batch) < len(requests)
                   and requests[start + len(batch)].args[1] == settings):
                batch.append(requests[start + len(batch)])
            settings = dict(settings)
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else until
            max_new_tokens = settings.pop("max_new_tokens", 128)
            temperature = settings.pop("temperature", 0) or 0
            sampling = {"do_sample": True, "temperature": temperature, "top_p": settings.get("top_p") or 1.0} \
                if temperature > 0 else {}
            texts = generate_answers(self.model, self.processor, [self.question(request) for request in batch],
                                     max_new_tokens, **sampling)
            for text in texts:
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                answers.append(text.strip())
            start += len(batch)
            progress.update(len(batch))
        progress.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after the prompt (ending in `### Assistant:`), and whether greedy
        decoding would produce it."""
        results = []
        for request in tqdm(requests, desc="sphinx_x", unit="sample", disable=self.rank != 0):
            context, target, _, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            prompt_length = build_inputs(self.processor, [self.question(request)])["input_ids"].shape[1]
            inputs = build_inputs(self.processor, [self.question(request, continuation)]).to(self.model.device)
            with torch.inference_mode():
                logits = self.model(**inputs).logits[0, prompt_length - 1 : -1].float()
            targets = inputs["input_ids"][0, prompt_length:]
            log_probs = torch.log_softmax(logits, dim=-1)
            total = log_probs.gather(-1, targets[:, None]).sum().item()
            results.append((total, bool((logits.argmax(-1) == targets).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("sphinx_x answers single-round lmms-eval tasks; multi-round ones are not supported.")
