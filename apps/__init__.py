"""User-facing programs on top of the model: grounded answers drawn with SAM masks (`sphinx-x ground`) and the Gradio
web demo (`sphinx-x demo`, also a Space through `apps/app.py`)."""
