"""A tiny random SAM checkpoint (the real architecture at a 64-pixel input), saved like a Hub one."""

import torch
from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil


SAM_INPUT = 64  # side of the tiny SAM's input; its low-resolution masks are SAM_INPUT / 2


def save_tiny_sam(folder) -> str:
    """A random SAM with the real architecture at a 64-pixel input, saved like a Hub checkpoint."""
    torch.manual_seed(0)
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=SAM_INPUT, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                           num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=SAM_INPUT, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessorPil(size={"longest_edge": SAM_INPUT},
                                           pad_size={"height": SAM_INPUT, "width": SAM_INPUT})
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return str(folder)
