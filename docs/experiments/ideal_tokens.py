"""What the ideal-token experiments share: the demo model's SmolLM2 with a fresh LoRA of the demo recipe's shape, its
own input embeddings as the words the "image" is built from, and the command line."""

import argparse
import functools

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoProcessor

from sphinx_x import SphinxXForConditionalGeneration


def parse_args(doc: str, forms, steps: int) -> argparse.Namespace:
    """`model --form F [--lr] [--steps] [--threads] [--seed]`; seeds torch and sets its threads."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", help="the untrained demo model folder (python -m sphinx_x.demo base ...)")
    parser.add_argument("--form", choices=forms, required=True)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="LoRA initialisation and training scenes")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    return args


class IdealTokens:
    """The LLM (`llm.model`, `llm.lm_head`, LoRA r=16 on every projection), its tokenizer and embeddings, and the
    chat template's ids up to the user's content (`prefix_ids`), where the image goes."""

    def __init__(self, model_path: str):
        model = SphinxXForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
        self.tokenizer = AutoProcessor.from_pretrained(model_path).tokenizer
        self.embeddings = model.get_input_embeddings().weight.detach()
        llm = torch.nn.Module()
        llm.model, llm.lm_head = model.model.language_model, model.lm_head
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        self.llm = get_peft_model(llm, LoraConfig(r=16, lora_alpha=32, target_modules=targets)).base_model.model
        prefix = self.tokenizer.apply_chat_template([{"role": "user", "content": "XX"}], tokenize=False)
        self.prefix_ids = self.ids(prefix.split("XX")[0])

    def ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @functools.cache
    def word(self, text: str) -> torch.Tensor:
        """The mean input embedding of `text`'s tokens."""
        return self.embeddings[self.ids(text)].mean(0)


def answer_batch(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad `(inputs [L, hidden], answer ids [n])` rows whose last n inputs embed the answer.

    Returns `inputs [B, L, hidden]`, `labels [B, L]` (the answer's ids at its own positions, -100 elsewhere) and the
    attention mask `[B, L]`. The logits at position q predict the label at q + 1 (`next_token_loss`).
    """
    length = max(len(inputs) for inputs, _ in rows)
    inputs = torch.zeros(len(rows), length, rows[0][0].shape[1])
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for row, (x, answer) in enumerate(rows):
        inputs[row, :len(x)], mask[row, :len(x)] = x, 1
        labels[row, len(x) - len(answer):len(x)] = answer
    return inputs, labels, mask


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits [B, L, vocab]` at each position against the label one position later."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
