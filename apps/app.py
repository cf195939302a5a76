"""Hugging Face Space entry point for the SPHINX-X web demo: copy this file as the `app.py` of a Gradio Space
(`sdk: gradio`), or run it here with `python apps/app.py` / `python -m sphinx_x.apps.app`.

Settings come from the Space's variables: `SPHINX_X_MODEL` (a converted SPHINX folder or Hub id; the embedded demo
model when unset), `SPHINX_X_SAM` (a SAM checkpoint such as `facebook/sam-vit-base`, for masks), `SPHINX_X_DTYPE`
(`float32`, `bfloat16` or `float16`). The Space's requirements install `sphinx-x[demo]`.
"""

import os

import torch

from sphinx_x.apps.web_demo import launch
from sphinx_x.cli import load_model


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model(os.environ.get("SPHINX_X_MODEL"), os.environ.get("SPHINX_X_DTYPE", "float32"), device)
    launch(model, processor, sam=os.environ.get("SPHINX_X_SAM"))
