from .image_processing_sphinx_x import SphinxXImageProcessor, image_token_count
from .processing_sphinx_x import SphinxXProcessor


__all__ = ["SphinxXImageProcessor", "SphinxXProcessor", "image_token_count"]
