"""Text-only chat for the demo model: training turns that keep its LLM's chat ability, and a held-out check.

The training turns are the base LLM's own greedy answers to templated instructions (self-distillation): trained on
them next to the image questions, the adapted model keeps answering plain questions as the base model did. The
held-out set is 20 instructions and facts whose answers are checked by keywords; none of its prompts is a training
prompt.

    python -m sphinx_x.training.demo.text_chat data/demo/base data/demo/text_chat.parquet
"""

import argparse
import itertools
import random
import re
from pathlib import Path

import torch
from tqdm import tqdm


COUNTRIES = {
    "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Canada": "Ottawa",
    "Egypt": "Cairo", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Portugal": "Lisbon",
    "Norway": "Oslo", "Sweden": "Stockholm", "Austria": "Vienna", "Poland": "Warsaw", "Ireland": "Dublin",
    "Kenya": "Nairobi", "Peru": "Lima", "Argentina": "Buenos Aires", "Thailand": "Bangkok", "Turkey": "Ankara",
}
TOPICS = ["the ocean", "a forest", "the moon", "coffee", "a bicycle", "rain", "mountains", "a library", "music",
          "the sun", "a garden", "winter", "a train", "friendship", "bread", "the desert", "a river", "snow"]
ANIMALS = ["cat", "dog", "horse", "elephant", "eagle", "dolphin", "bee", "lion", "penguin", "frog"]
TEMPLATES = [
    "What is the capital of {country}?",
    "Write one sentence about {topic}.",
    "Give me a short description of a {animal}.",
    "What is {a} plus {b}?",
    "What is {a} times {b}?",
    "List three words that rhyme with {rhyme}.",
    "Say hello in a friendly way.",
    "What color is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "How many days are there in a week?",
    "Tell me a fun fact about {animal}s.",
    "Explain in one sentence what {topic} is.",
]
RHYMES = ["cat", "light", "day", "tree", "cake", "ring", "blue", "star"]
MAX_ANSWER_TOKENS = 128

# Held-out instructions and facts: (prompt, any of these keywords in the answer, case-insensitive).
HELDOUT = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is 2 plus 3?", ["5", "five"]),
    ("What is 10 minus 4?", ["6", "six"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What is the chemical symbol for water?", ["h2o", "h₂o"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("What do bees make?", ["honey"]),
    ("What is the opposite of hot?", ["cold"]),
    ("How many months are there in a year?", ["12", "twelve"]),
    ("What color do you get when you mix blue and yellow?", ["green"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What is the freezing point of water in Celsius?", ["0", "zero"]),
    ("Translate 'thank you' into Spanish.", ["gracias"]),
    ("What is the boiling point of water in Celsius?", ["100"]),
    ("Name the planet we live on.", ["earth"]),
    ("What gas do plants take in from the air?", ["carbon dioxide", "co2"]),
    ("Write the word 'apple' in capital letters.", ["APPLE"]),
    ("What is the first letter of the English alphabet?", ["a"]),
]


def training_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct training prompts from `TEMPLATES`, none of them a held-out prompt."""
    rng = random.Random(f"sphinx-x-text-chat/{seed}")
    held_out = {prompt for prompt, _ in HELDOUT}
    prompts = {}
    for _ in itertools.count():
        if len(prompts) == count:
            break
        country = rng.choice(list(COUNTRIES))
        prompt = rng.choice(TEMPLATES).format(
            country=country, topic=rng.choice(TOPICS), animal=rng.choice(ANIMALS), a=rng.randint(2, 20),
            b=rng.randint(2, 20), rhyme=rng.choice(RHYMES),
        )
        if prompt not in held_out:
            prompts[prompt] = None
    return list(prompts)


def keyword_hit(answer: str, keywords: list[str]) -> bool:
    """Whether the answer holds one of the keywords (upper-case keywords must match case; words as whole words)."""
    for keyword in keywords:
        text, word = (answer, keyword) if keyword.isupper() else (answer.lower(), keyword.lower())
        if re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text):
            return True
    return False


@torch.inference_mode()
def chat_answers(model, processor, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
                 desc: str = "answers") -> tuple[list[str], list[bool]]:
    """Greedy answers of a SPHINX-X model to text-only prompts, batched (left padding), and for each whether it
    ended with an end-of-sequence token (`False`: cut at `max_new_tokens`)."""
    eos = model.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [eos])
    answers, finished = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch = [[{"role": "user", "content": [{"type": "text", "text": prompt}]}]
                 for prompt in prompts[start:start + batch_size]]
        inputs = processor.apply_chat_template(batch, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", processor_kwargs={"padding": True})
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = output[:, inputs["input_ids"].shape[1]:]
        answers += [text.strip() for text in processor.batch_decode(generated, skip_special_tokens=True)]
        finished += torch.isin(generated.cpu(), eos).any(dim=1).tolist()
    return answers, finished


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the untrained demo model folder (its LLM is the base SmolLM2)")
    parser.add_argument("out", type=Path, help="parquet file of chat rows (messages, task)")
    parser.add_argument("--count", type=int, default=320, help="training prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the base model's while it answers (float32 on CPUs without bfloat16 units: about ten "
                             "times faster there)")
    args = parser.parse_args(argv)
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..synthetic.dataset import FEATURES

    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    prompts = training_prompts(args.count, args.seed)
    # An answer cut at the token budget would teach the model to stop mid-sentence: only finished ones are kept.
    answers, finished = chat_answers(model, processor, prompts, max_new_tokens=MAX_ANSWER_TOKENS, desc="distilling")
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]},
                      {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
         "images": [], "task": "text_chat", "question": prompt, "answer": answer, "width": 0, "height": 0,
         "objects": [], "target_box": [], "details": "{}", "sample_id": f"{args.seed}/train/text_chat/{index}"}
        for index, (prompt, answer, done) in enumerate(zip(prompts, answers, finished)) if answer and done
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name}.partial")
    try:
        Dataset.from_list(rows, features=FEATURES).to_parquet(partial)
        partial.replace(args.out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{len(rows)} text chat rows -> {args.out}")


if __name__ == "__main__":
    main()
