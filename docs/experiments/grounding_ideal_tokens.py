"""Does SmolLM2 + LoRA learn to answer a box from grid tokens that say what is where? (docs/demo_model.md,
"Grounding from ideal tokens")

    python docs/experiments/grounding_ideal_tokens.py data/demo/base --form add
        [--lr 3e-4] [--steps 300] [--threads 2] [--seed 0]

The "image" is one 8x8 view built from the LLM's own input embeddings, placed where the chat template puts the image:
2-6 square shapes in distinct cells of a 3x3 layout (side 0.23-0.33 of the image, as `make_scene` draws them), each
grid cell whose centre lies in a shape the mean of its colour's and kind's embeddings, the other cells the word
"background". `--form add` adds a learned row and column embedding to every cell (trained with the LoRA); `none`
leaves the place of a cell to the LLM's rotary positions alone. One question per scene, the reference REC prompt
about a shape whose colour and kind are unique, answered `[x1,y1,x2,y2]` with two decimals; 8 scenes per step, a
fresh LoRA of the demo recipe's shape, float32. Every 25 steps it prints, on 60 other scenes, the share of boxes with
IoU >= 0.5 and the token accuracy of the answer, both teacher-forced (each token predicted from the right ones before).
"""

import random
import time

import torch
from ideal_tokens import IdealTokens, answer_batch, next_token_loss, parse_args

from sphinx_x.processors.grounding import box_iou
from sphinx_x.training.synthetic.scene import COLORS, SHAPES


GRID = 8
PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: the {} {}."


def main():
    args = parse_args(__doc__, ["none", "add"], steps=300)
    ideal = IdealTokens(args.model)
    tokenizer, embeddings, llm, prefix_ids = ideal.tokenizer, ideal.embeddings, ideal.llm, ideal.prefix_ids
    ids, word = ideal.ids, ideal.word
    rows_embedding = torch.nn.Parameter(torch.randn(GRID, embeddings.shape[1]) * embeddings.std() * 0.5)
    cols_embedding = torch.nn.Parameter(torch.randn(GRID, embeddings.shape[1]) * embeddings.std() * 0.5)
    cells = torch.arange(GRID * GRID)

    def scene(rng: random.Random):
        shapes = []
        for place in rng.sample(range(9), rng.randint(2, 6)):
            side = rng.uniform(0.7, 0.98) / 3
            x = (place % 3) / 3 + rng.uniform(0, 1 / 3 - side)
            y = (place // 3) / 3 + rng.uniform(0, 1 / 3 - side)
            shapes.append(([x, y, x + side, y + side], rng.choice(list(COLORS)), rng.choice(SHAPES)))
        grid = [word("background")] * GRID**2
        for box, color, kind in shapes:
            for cell in range(GRID**2):
                x, y = (cell % GRID + 0.5) / GRID, (cell // GRID + 0.5) / GRID
                if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                    grid[cell] = (word(color) + word(kind)) / 2
        looks = [(color, kind) for _, color, kind in shapes]
        box, color, kind = rng.choice([shape for shape in shapes if looks.count(shape[1:]) == 1] or shapes[:1])
        question = ids(f"\n{PROMPT.format(color, kind)}<|im_end|>\n<|im_start|>assistant\n")
        answer = ids("[" + ",".join(f"{value:.2f}" for value in box) + "]<|im_end|>")
        return grid, question, answer, box

    def logits(items):
        rows = []
        for grid, question, answer, _ in items:
            image = torch.stack(grid)
            if args.form == "add":
                image = image + rows_embedding[cells // GRID] + cols_embedding[cells % GRID]
            rows.append((torch.cat([embeddings[prefix_ids], image, embeddings[question], embeddings[answer]]), answer))
        inputs, labels, mask = answer_batch(rows)
        return llm.lm_head(llm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state), labels

    heldout_rng = random.Random(123)
    heldout = [scene(heldout_rng) for _ in range(60)]

    @torch.no_grad()
    def score() -> tuple[float, float]:
        right = tokens_right = tokens = 0
        for start in range(0, len(heldout), 20):
            items = heldout[start:start + 20]
            scores, labels = logits(items)
            for row, (*_, box) in enumerate(items):
                at = (labels[row] != -100).nonzero()[:, 0]
                predicted = scores[row, at - 1].argmax(-1)
                tokens_right += (predicted == labels[row, at]).sum().item()
                tokens += len(at)
                try:
                    answer = [float(value) for value in tokenizer.decode(predicted[:-1]).strip("[]").split(",")]
                    right += len(answer) == 4 and box_iou(answer, box) >= 0.5
                except ValueError:
                    pass
        return right / len(heldout), tokens_right / tokens

    parameters = [p for p in llm.parameters() if p.requires_grad]
    if args.form == "add":
        parameters += [rows_embedding, cols_embedding]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr)
    rng, start = random.Random(args.seed), time.time()
    print(f"{args.form} step 0 IoU>=0.5 {score()[0]:.2f}", flush=True)
    for step in range(1, args.steps + 1):
        scores, labels = logits([scene(rng) for _ in range(8)])
        loss = next_token_loss(scores, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0:
            boxes, tokens = score()
            print(f"{args.form} step {step} loss {loss.item():.3f} held-out IoU>=0.5 {boxes:.2f} "
                  f"token accuracy {tokens:.2f} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
