from setuptools import setup


# One import package, `sphinx_x`, assembled from the top-level folders of the repository.
FOLDERS = {
    "sphinx_x": "modeling_sphinx_x",
    "sphinx_x.processors": "processors",
    "sphinx_x.conversion": "conversion",
    "sphinx_x.training": "training",
    "sphinx_x.model_cards": "model_cards",
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
    ],
    extras_require={
        "train": ["trl==1.16.*", "peft>=0.17", "datasets>=4.7", "pyyaml"],
        "flash": ["flash-attn>=2.6"],
        "qlora": ["bitsandbytes>=0.45"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["sphinx-x = sphinx_x_cli:main"]},
)
