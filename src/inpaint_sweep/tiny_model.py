"""The built-in model: a tiny, randomly initialised Stable Diffusion inpainting pipeline built in code.

Nothing is downloaded: the UNet, VAE, CLIP text encoder and the byte-level BPE tokenizer are all constructed here
from a seed. The pipeline runs the real diffusers code path, so every stage works offline, but its weights are random:
it paints noise inside the mask. Switch to a real checkpoint with `model=sd2_inpaint` (see the README).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Bump when the architecture below changes, so cached copies built by older code are not reused.
TINY_MODEL_VERSION = "2"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the alphabet of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer():
    """A CLIP tokenizer whose vocabulary is every byte, alone and as a word ending: any prompt tokenizes."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_pipeline(seed: int = 0):
    """Build the tiny inpainting pipeline, deterministically from `seed`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=9,  # 4 noisy latents + 4 masked-image latents + 1 mask: the inpainting UNet layout
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # Four blocks give the VAE the downscale factor of 8 that real SD has (latents are 1/8 of the image side).
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Save the tiny pipeline once under `cache_dir` and return its folder (a normal diffusers checkpoint).

    The folder is written to a temporary name and renamed into place, so parallel jobs never see half a checkpoint.
    """
    target = Path(cache_dir) / f"tiny-sd-inpaint-v{TINY_MODEL_VERSION}-seed{seed}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build_tiny_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
