"""`sphinx-x eval` end to end, offline: every task on small local files in its Hub schema, the converted fixture
(batched, resumable), the embedded demo model, and lmms-eval through the `sphinx_x` model class."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
from datasets import Dataset, Features, Image, List, Value

import sphinx_x.evaluation.runner as runner
from sphinx_x.cli import main
from sphinx_x.evaluation import TASKS, evaluate
from sphinx_x.evaluation.demo_tasks import TASK_NAMES
from sphinx_x.evaluation.multiple_choice import LETTERS
from sphinx_x.evaluation.runner import build_inputs, generate_answers, run_task, score_task
from sphinx_x.evaluation.task import Sample
from sphinx_x.training.synthetic.boxes import normalize_box
from sphinx_x.training.synthetic.dataset import build_dataset

from conftest import chat_inputs, make_tiny_model_and_processor


def picture(width=48, height=32, colour=(200, 40, 40)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (width, height), colour)


def write(rows: list[dict], path: Path, features: dict | None = None) -> Path:
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    Dataset.from_dict(columns, features=Features(features) if features else None).to_parquet(path)
    return path


def local_benchmarks(folder: Path) -> dict[str, Path]:
    """Two to four rows per task, in the schema of its Hub dataset (RefCOCO as JSON lines with image paths)."""
    image = {"image": Image()}
    files = {}
    files["mmbench_en_dev"] = write([
        {"index": 7, "question": "Which animal?", "hint": "A farm.", "A": "cow", "B": "hen", "C": "pig", "D": "nan",
         "answer": "C", "category": "animals", "image": picture()},
        {"index": 8, "question": "Which colour?", "hint": None, "A": "red", "B": "blue", "C": None, "D": None,
         "answer": "A", "category": "colours", "image": picture()},
    ], folder / "mmbench.parquet", {"index": Value("int64"), "question": Value("string"), "hint": Value("string"),
                                    **{letter: Value("string") for letter in "ABCD"}, "answer": Value("string"),
                                    "category": Value("string"), **image})
    files["seedbench"] = write([
        {"question_id": "1", "question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3",
         "choice_d": "4", "answer": "B", "data_type": "image", "image": [picture()]},
        {"question_id": "2", "question": "What happens next?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "D", "data_type": "video", "image": [picture(), picture()]},
        {"question_id": "3", "question": "Where?", "choice_a": "left", "choice_b": "right", "choice_c": "up",
         "choice_d": "down", "answer": "D", "data_type": "image", "image": [picture()]},
    ], folder / "seed.parquet", {**{name: Value("string") for name in ("question_id", "question", "choice_a",
                                                                       "choice_b", "choice_c", "choice_d", "answer",
                                                                       "data_type")}, "image": List(Image())})
    files["scienceqa_img"] = write([
        {"question": "Which is a mammal?", "hint": "", "choices": ["shark", "whale"], "answer": 1,
         "image": picture()},
        {"question": "Which is hot?", "hint": "Look at the map.", "choices": ["ice", "sun", "snow"], "answer": 1,
         "image": picture()},
    ], folder / "scienceqa.parquet")
    files["mmvp"] = write([
        {"Index": index, "Question": "Is the door open?", "Options": "(a) Open (b) Closed",
         "Correct Answer": answer, "image": picture()}
        for index, answer in ((1, "(a)"), (2, "(b)"), (3, "(b)"), (4, "(a)"))
    ], folder / "mmvp.parquet", {"Index": Value("int64"), "Question": Value("string"), "Options": Value("string"),
                                 "Correct Answer": Value("string"), **image})
    files["vqav2_val"] = write([
        {"question_id": 1, "question": "How many dogs?",
         "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(10)],
         "image": picture()},
        {"question_id": 2, "question": "What colour?",
         "answers": [{"answer": "red" if i < 4 else "orange", "answer_confidence": "yes", "answer_id": i}
                     for i in range(10)], "image": picture()},
    ], folder / "vqav2.parquet")
    files["textvqa_val"] = write([
        {"question_id": "t1", "question": "What brand?", "answers": ["acme"] * 10, "image": picture()},
    ], folder / "textvqa.parquet")
    files["gqa"] = write([
        {"id": "g1", "imageId": "n1", "question": "Is the sky blue?", "answer": "yes", "image": picture()},
    ], folder / "gqa.parquet")
    for task, name in (("docvqa_val", "docvqa"), ("infovqa_val", "infovqa")):
        files[task] = write([
            {"questionId": "d1", "question": "What is the total?", "answers": ["$12.00", "12.00"], "image": picture()},
        ], folder / f"{name}.parquet")
    files["chartqa"] = write([
        {"question": "Highest value?", "answer": "41.5", "type": "human_test", "image": picture()},
        {"question": "Which year?", "answer": "2019", "type": "augmented_test", "image": picture()},
    ], folder / "chartqa.parquet")
    yes_no = [
        {"question_id": image_id, "question": f"Is there a {thing} in the image?", "answer": answer,
         "category": category, "image": picture()}
        for image_id, thing, answer, category in (("existence/1.png", "cat", "Yes", "existence"),
                                                  ("existence/1.png", "dog", "No", "existence"),
                                                  ("code_reasoning/2.png", "loop", "Yes", "code_reasoning"),
                                                  ("code_reasoning/2.png", "bug", "No", "code_reasoning"))
    ]
    files["mme"] = write(yes_no, folder / "mme.parquet")
    files["pope"] = write([{**row, "answer": row["answer"].lower(), "category": "random"} for row in yes_no],
                          folder / "pope.parquet")
    picture(200, 100).save(folder / "wide.png")
    picture(60, 120).save(folder / "tall.png")
    rows = [{"question_id": 1, "image": "wide.png", "bbox": [10, 20, 80, 60], "answer": ["the left one", "red"]},
            {"question_id": 2, "image": "tall.png", "bbox": [5, 50, 40, 40], "answer": ["bottom"]}]
    files["refcoco_val"] = folder / "refcoco.jsonl"
    files["refcoco_val"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    build_dataset({key: 2 for key in TASK_NAMES}, split="heldout", max_side=192).to_parquet(folder / "heldout.parquet")
    for name in TASK_NAMES.values():
        files[name] = folder / "heldout.parquet"
    return files


def oracle(task: str, reference, placement: str) -> str:
    """The right answer to a question, written the way a model would."""
    if task.startswith("refcoco"):
        box = normalize_box(reference["box"], reference["width"], reference["height"], placement)
        return "[" + ",".join(f"{value:.2f}" for value in box) + "]"
    if isinstance(reference, str):  # the demo tasks
        return reference
    if "choices" in reference:
        return f"{reference['answer']}. {reference['choices'][LETTERS.index(reference['answer'])]}"
    if "answers" in reference:
        return reference["answers"][0].upper()  # the metrics ignore case
    return reference["answer"].capitalize() + "."


# What the right answers score: 100 everywhere; MME sums its categories (accuracy + accuracy+, 200 each).
PERFECT = {"perception": 200.0, "cognition": 200.0}


def test_every_task_reads_its_local_schema_and_scores_right_answers_perfectly(tmp_path, monkeypatch):
    files = local_benchmarks(tmp_path)
    _, processor = make_tiny_model_and_processor()
    placement = runner.image_placement(processor)
    prompts = {}

    def answer(model, processor, samples, max_new_tokens):
        prompts.setdefault(task.name, samples[0].question + samples[0].suffix)
        return [oracle(task.name, sample.reference, placement) for sample in samples]

    monkeypatch.setattr(runner, "generate_answers", answer)
    for task in TASKS.values():
        data = files["refcoco_val"] if task.name.startswith("refcoco") else files[task.name]  # one RefCOCO schema
        records = run_task(None, processor, task, tmp_path / f"{task.name}.jsonl", model_name="oracle",
                           data_files=str(data), batch_size=3)
        metrics = score_task(task, records, tmp_path / f"{task.name}.scored.jsonl")
        assert metrics[task.metric] == PERFECT.get(task.metric, 100.0), (task.name, metrics)
    assert {name: len(run_task(None, processor, TASKS[name], tmp_path / f"{name}.jsonl", model_name="oracle",
                               data_files=str(files[name]))) for name in ("seedbench", "refcoco_val")} == {
        "seedbench": 2, "refcoco_val": 3}  # video questions dropped; one question per expression
    assert prompts["mme"] == "Is there a cat in the image?\nAnswer the question using a single word or phrase."
    assert prompts["scienceqa_img"] == "Which is a mammal?\nA. shark\nB. whale The answer is"
    assert prompts["mmbench_en_dev"] == ("A farm.\nWhich animal?\nA. cow\nB. hen\nC. pig\n"
                                         "Answer with the option's letter from the given choices directly.")
    assert prompts["refcoco_val"] == ("Please provide the bounding box coordinate of the region this sentence "
                                      "describes: the left one.")


def test_batched_inputs_are_the_chat_template_and_answers_do_not_depend_on_the_batch(converted_dir):
    from sphinx_x.cli import load_model

    model, processor = load_model(str(converted_dir))
    samples = [Sample(image=picture(64, 32), question="Is it red?", reference=None),
               Sample(image=picture(30, 60, (10, 10, 200)), question="What color is the big shape?", reference=None),
               Sample(image=None, question="Say hi.", reference=None)]
    conversations = [[{"role": "user", "content": ([{"type": "image", "image": s.image}] if s.image else [])
                       + [{"type": "text", "text": s.question}]}] for s in samples]
    expected = chat_inputs(processor, conversations, padding=True)
    inputs = build_inputs(processor, samples)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    assert inputs["input_ids"][0, 0] == processor.tokenizer.pad_token_id  # left padding
    batched = generate_answers(model, processor, samples, 6)
    assert batched == [generate_answers(model, processor, [sample], 6)[0] for sample in samples]
    suffixed = build_inputs(processor, [Sample(image=None, question="Hi.", reference=None, suffix=" The answer is")])
    assert processor.decode(suffixed["input_ids"][0]).endswith("### Assistant: The answer is")


def test_eval_command_on_the_converted_fixture_resumes(converted_dir, tmp_path, capsys, monkeypatch):
    files = local_benchmarks(tmp_path)
    output = tmp_path / "out" / "results.json"

    def command(limit: int, model: Path | None = converted_dir) -> list[str]:
        return ["eval", *(["--model", str(model)] if model else []), "--task", "mme", "--data", str(files["mme"]),
                "--limit", str(limit), "--batch-size", "2", "--output", str(output)]

    assert main(command(3)) == 0
    table = capsys.readouterr().out
    assert re.search(r"^mme\s+perception\s+3\s+\d+\.\d\d  -$", table, re.MULTILINE), table
    predictions = tmp_path / "out" / "results-predictions" / "mme.jsonl"
    lines = predictions.read_text().splitlines()
    assert json.loads(lines[0])["task"] == "mme" and [json.loads(line)["row"] for line in lines[1:]] == [0, 1, 2]
    results = json.loads(output.read_text())["mme"]
    scored = [json.loads(line) for line in Path(results["predictions"]).read_text().splitlines()]
    assert [record["score"]["predicted"] in ("yes", "no", "other") for record in scored] == [True] * 3

    def no_generation(*args, **kwargs):
        raise AssertionError("answered again")

    lines[-1] = lines[-1][:10]  # the last answer was cut off by an interrupted run: it is asked again
    predictions.write_text("\n".join(lines))
    asked = []
    monkeypatch.setattr(runner, "generate_answers", lambda model, processor, samples, n: asked.extend(samples) or
                        ["Yes"] * len(samples))
    assert main(command(4)) == 0
    assert len(asked) == 2  # rows 2 (cut) and 3 (new); rows 0 and 1 come from the file
    assert json.loads(output.read_text())["mme"]["samples"] == 4
    assert [json.loads(line)["row"] for line in predictions.read_text().splitlines()[1:] if line != lines[-1]] == [
        0, 1, 2, 3]
    monkeypatch.setattr(runner, "generate_answers", no_generation)
    assert main(command(4)) == 0
    assert main(command(4, model=None)) == 2  # the demo model
    assert "not of" in capsys.readouterr().err  # predictions of another model are never mixed in


def test_eval_command_errors(tmp_path, capsys):
    assert main(["eval", "--task", "mmmu", "--output", str(tmp_path / "r.json")]) == 2
    assert "unknown task 'mmmu'" in capsys.readouterr().err
    assert main(["eval", "--task", "mme,pope", "--data", str(tmp_path / "x.parquet")]) == 2
    assert "--data gives the rows of one task" in capsys.readouterr().err
    assert main(["eval", "--task", "mme", "--data", str(tmp_path / "x.parquet"),
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_demo_tasks_on_the_embedded_demo_model(tmp_path, capsys):
    """The demo model through the entry point `sphinx-x chat` uses; the README's demo table comes from this command
    without --limit."""
    output = tmp_path / "results.json"
    assert main(["eval", "--task", "demo", "--limit", "3", "--batch-size", "3", "--output", str(output)]) == 0
    table = capsys.readouterr().out
    results = json.loads(output.read_text())
    keys = {name: key for key, name in TASK_NAMES.items()}
    assert list(results) == list(keys)
    for name, result in results.items():
        scored = [json.loads(line) for line in Path(result["predictions"]).read_text().splitlines()]
        key = keys[name]
        assert [record["id"] for record in scored] == [f"0/heldout/{key}/{index}" for index in range(3)]
        correct = sum(record["score"]["correct"] for record in scored)
        assert result["metrics"]["accuracy"] == pytest.approx(100 * correct / 3)
        assert re.search(rf"^{name}\s+accuracy\s+3\s+{result['metrics']['accuracy']:.2f}", table, re.MULTILINE)


LMMS_TASK = """task: sphinx_x_local_colors
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function local_utils.doc_to_visual
doc_to_text: !function local_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 24
process_results: !function local_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
LMMS_UTILS = '''def doc_to_visual(doc):
    return [doc["images"][0].convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].strip().lower())}
'''


def test_lmms_eval_runs_the_sphinx_x_model_on_a_local_task(tmp_path):
    """`lmms-eval --model sphinx_x` (found through the entry point) on a task defined from local files: the demo
    model's Set-of-Mark questions, scored like `sphinx-x eval --task demo_som_color`, which must agree."""
    pytest.importorskip("lmms_eval", reason='lmms-eval is installed with --no-deps, see .ci/run')
    rows = build_dataset({"som_color": 6}, split="heldout", max_side=224)
    rows.to_parquet(tmp_path / "colors.parquet")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "colors.yaml").write_text(LMMS_TASK.format(data=tmp_path / "colors.parquet"))
    (tmp_path / "tasks" / "local_utils.py").write_text(LMMS_UTILS)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "lmms-eval"), "--model", "sphinx_x", "--model_args", "device=cpu",
               "--tasks", "sphinx_x_local_colors", "--include_path", str(tmp_path / "tasks"), "--batch_size", "3",
               "--output_path", str(tmp_path / "lmms")]
    run = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    row = re.search(r"\|sphinx_x_local_colors\s*\|.*\|exact_match\|.*?\|\s*([\d.]+)\|", run.stdout)
    assert row, run.stdout[-3000:]
    ours = evaluate(None, "demo_som_color", data_files=str(tmp_path / "colors.parquet"), batch_size=3,
                    output=tmp_path / "ours" / "results.json")["demo_som_color"]["metrics"]["accuracy"]
    assert float(row.group(1)) == pytest.approx(ours / 100, abs=1e-4)
