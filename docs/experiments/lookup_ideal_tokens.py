"""Does SmolLM2 + LoRA learn the Set-of-Mark lookup when reading is perfect? (docs/demo_model.md, "Does the LLM
learn the lookup from the image tokens?")

    python docs/experiments/lookup_ideal_tokens.py data/demo/base --form seq
        [--lr 3e-4] [--steps 120] [--threads 2] [--seed 0]

The "image" is one 8x8 view of positions built from the LLM's own input embeddings (`--form`, see FORMS), placed
where the chat template puts the image; 2-6 shapes per scene, each a block of 2x2 cells at one of 16 places, labelled
1..n in random order. One question per scene ("What color is the shape labeled K?"), 8 scenes per step, a fresh LoRA
of the demo recipe's shape. Every 20 steps it prints the held-out accuracy on 100 other scenes: the first answer
token, among the eight colours' first tokens.
"""

import random
import time

import torch
from ideal_tokens import IdealTokens, answer_batch, next_token_loss, parse_args

from sphinx_x.training.synthetic.scene import COLORS, SHAPES


FORMS = {
    "text": "no grid: the scene written out, '3 red, 1 blue,' in random order",
    "mean": "shape cells: mean of colour and kind; one cell per block: mean of colour, kind and digit",
    "sum": "as mean, the digit's embedding added at full size to the mark's cell",
    "seq": "as mean, the block's first cell (reading order) the digit alone",
    "pure": "as seq, every shape cell the colour alone",
}


def main():
    args = parse_args(__doc__, FORMS, steps=120)
    ideal = IdealTokens(args.model)
    embeddings, llm, prefix_ids = ideal.embeddings, ideal.llm, ideal.prefix_ids
    ids, word = ideal.ids, ideal.word
    colors = list(COLORS)
    first_tokens = torch.tensor([ids(color)[0] for color in colors])

    def scene(rng: random.Random):
        count = rng.randint(2, 6)
        places, marks = rng.sample(range(16), count), rng.sample(range(1, count + 1), count)
        grid, objects = [word("background")] * 64, []
        for place, mark in zip(places, marks):
            color, shape = rng.choice(colors), rng.choice(SHAPES)
            objects.append((mark, color))
            row, col = divmod(place, 4)
            cells = [(2 * row + i) * 8 + 2 * col + j for i in range(2) for j in range(2)]
            for cell in cells:
                grid[cell] = word(color) if args.form == "pure" else (word(color) + word(shape)) / 2
            mark_cell = cells[0] if args.form in ("seq", "pure") else rng.choice(cells)
            grid[mark_cell] = {
                "mean": (word(color) + word(shape) + word(str(mark))) / 3,
                "sum": (word(color) + word(shape)) / 2 + word(str(mark)),
            }.get(args.form, word(str(mark)))
        mark, color = rng.choice(objects)
        if args.form == "text":
            listed = sorted(objects, key=lambda _: rng.random())
            image = embeddings[ids(" ".join(f"{m} {c}," for m, c in listed))]
        else:
            image = torch.stack(grid)
        question = ids(f"\nWhat color is the shape labeled {mark}?<|im_end|>\n<|im_start|>assistant\n")
        answer = ids(color + "<|im_end|>")
        inputs = torch.cat([embeddings[prefix_ids], image, embeddings[question], embeddings[answer]])
        return inputs, answer, colors.index(color)

    def batch(rng: random.Random, size: int):
        items = [scene(rng) for _ in range(size)]
        inputs, labels, mask = answer_batch([(x, answer) for x, answer, _ in items])
        answer_at = torch.tensor([len(x) - len(answer) for x, answer, _ in items])
        return inputs, labels, mask, answer_at, torch.tensor([c for _, _, c in items])

    def logits(inputs, mask):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return llm.lm_head(llm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state).float()

    heldout = batch(random.Random(123), 100)

    @torch.no_grad()
    def accuracy() -> float:
        inputs, _, mask, answer_at, colour = heldout
        scores = logits(inputs, mask)[torch.arange(len(answer_at)), answer_at - 1][:, first_tokens]
        return (scores.argmax(-1) == colour).float().mean().item()

    optimizer = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], lr=args.lr)
    rng, start = random.Random(args.seed), time.time()
    print(f"{args.form} step 0 held-out {accuracy():.2f}", flush=True)
    for step in range(1, args.steps + 1):
        inputs, labels, mask, _, _ = batch(rng, 8)
        loss = next_token_loss(logits(inputs, mask), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0:
            print(f"{args.form} step {step} loss {loss.item():.3f} held-out {accuracy():.2f} "
                  f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
