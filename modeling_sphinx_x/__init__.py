"""SPHINX-X for transformers. Importing the package registers it with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_sphinx_x import SphinxXConfig
from .modeling_sphinx_x import SphinxXForConditionalGeneration, SphinxXModel, SphinxXPreTrainedModel
from .processors import SphinxXImageProcessor, SphinxXProcessor


AutoConfig.register("sphinx_x", SphinxXConfig, exist_ok=True)
AutoModel.register(SphinxXConfig, SphinxXModel, exist_ok=True)
AutoModelForImageTextToText.register(SphinxXConfig, SphinxXForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(SphinxXConfig, image_processor_classes={"pil": SphinxXImageProcessor}, exist_ok=True)
AutoProcessor.register(SphinxXConfig, SphinxXProcessor, exist_ok=True)

# `save_pretrained` copies the defining files next to the weights and writes `auto_map`, so a saved folder loads with
# `trust_remote_code=True` where this package is not installed.
SphinxXConfig.register_for_auto_class()
SphinxXForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
SphinxXImageProcessor.register_for_auto_class("AutoImageProcessor")
SphinxXProcessor.register_for_auto_class("AutoProcessor")


def __getattr__(name: str):
    # The demo helpers load on first use: imported here, `python -m sphinx_x.demo` would run a module the package had
    # already imported (runpy's RuntimeWarning).
    if name in ("demo_model_path", "load_demo"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "SphinxXConfig",
    "SphinxXForConditionalGeneration",
    "SphinxXImageProcessor",
    "SphinxXModel",
    "SphinxXPreTrainedModel",
    "SphinxXProcessor",
    "demo_model_path",
    "load_demo",
]
