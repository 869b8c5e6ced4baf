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


def _tiny_unet(**extra):
    """A 2-block inpainting UNet: 9 input channels = 4 noisy latents + 4 masked-image latents + 1 mask."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **extra,
    )


def _tiny_vae(**extra):
    """A 4-block VAE: the downscale factor of 8 that real SD has (latents are 1/8 of the image side)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
        **extra,
    )


def _tiny_text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
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
        **extra,
    )


def build_tiny_pipeline(seed: int):
    """Build the tiny inpainting pipeline, deterministically from `seed`."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=8)
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
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


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike, seed: int) -> Path:
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


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A tiny SDXL inpainting pipeline (two CLIP text encoders, `text_time` added conditioning), from `seed`.

    The layout of diffusers' own StableDiffusionXLInpaintPipeline tests, with the 9-channel inpainting UNet and a
    4-block VAE (downscale factor 8). Random weights: it paints noise. Used to test the SDXL code path offline.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = _tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",  # SDXL's micro-conditioning: sizes and crop, plus the pooled text embedding
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 (text_encoder_2's projection_dim)
        cross_attention_dim=64,  # the two encoders' hidden states, concatenated: 32 + 32
    )
    # As SDXL's own VAE config: force_upcast decodes in float32 when the pipeline runs in float16.
    vae = _tiny_vae(force_upcast=True)
    text_config = _tiny_text_config(tokenizer, hidden_act="gelu", projection_dim=32)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )


_RESNET_TO_LDM = (  # diffusers UNet resnet names -> the original (LDM) names
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION_TO_LDM = (
    ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."),
)


def _rename(key: str, pairs) -> str:
    for old, new in pairs:
        key = key.replace(old, new)
    return key


def _unet_to_ldm(unet) -> dict:
    """A diffusers UNet2DConditionModel's weights under the original `model.diffusion_model.*` names.

    The inverse of diffusers' convert_ldm_unet_checkpoint for any number of blocks and layers_per_block.
    """
    n = unet.config.layers_per_block + 1  # LDM slots per down block: its resnets, then the downsampler
    fixed = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    }
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        head = ".".join(parts[:2]) if parts[0] == "time_embedding" else parts[0]
        if head in fixed:
            new = f"{fixed[head]}.{'.'.join(parts[len(head.split('.')):])}"
        elif parts[0] == "down_blocks":
            block, kind, rest = int(parts[1]), parts[2], parts[3:]
            if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.X
                new = f"input_blocks.{n * (block + 1)}.0.op.{rest[-1]}"
            else:
                layer, slot, rest = _block_layer(kind, rest)
                new = f"input_blocks.{n * block + layer + 1}.{slot}.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_rename(rest, _RESNET_TO_LDM)}"
            else:
                new = f"middle_block.{2 * index + 1}.{rest}"
        elif parts[0] == "up_blocks":
            block, kind, rest = int(parts[1]), parts[2], parts[3:]
            if kind == "upsamplers":  # after the block's last layer: slot 1 without attention, 2 with it
                has_attention = hasattr(unet.up_blocks[block], "attentions")
                new = f"output_blocks.{n * block + n - 1}.{2 if has_attention else 1}.conv.{rest[-1]}"
            else:
                layer, slot, rest = _block_layer(kind, rest)
                new = f"output_blocks.{n * block + layer}.{slot}.{rest}"
        else:
            raise ValueError(f"no original-layout name for UNet weight {key!r}")
        out[f"model.diffusion_model.{new}"] = value
    return out



def _block_layer(kind: str, rest: list[str]) -> tuple[int, str, str]:
    """Layer index, slot in the original block (0 resnet, 1 attention) and renamed tail of a down/up block weight."""
    layer, tail = int(rest[0]), ".".join(rest[1:])
    if kind == "resnets":
        return layer, "0", _rename(tail, _RESNET_TO_LDM)
    return layer, "1", tail

def _vae_to_ldm(vae) -> dict:
    """A diffusers AutoencoderKL's weights under the original `first_stage_model.*` names (attention as 1x1 convs)."""
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out")
        parts = new.split(".")
        if parts[1] == "down_blocks":  # encoder.down_blocks.B.{resnets.J|downsamplers.0}.X
            sub = f"block.{parts[4]}" if parts[3] == "resnets" else "downsample"
            new = ".".join(["encoder", "down", parts[2], sub, *parts[5:]])
        elif parts[1] == "up_blocks":  # decoder.up_blocks.B -> decoder.up.(n-1-B): LDM counts from the bottom
            sub = f"block.{parts[4]}" if parts[3] == "resnets" else "upsample"
            new = ".".join(["decoder", "up", str(n_up - 1 - int(parts[2])), sub, *parts[5:]])
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            new = ".".join([parts[0], "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
        elif parts[1] == "mid_block":
            new = ".".join([parts[0], "mid", "attn_1", _rename(".".join(parts[4:]) + ".", _VAE_ATTENTION_TO_LDM)[:-1]])
            if value.ndim == 2:
                value = value[:, :, None, None]
        new = new.replace("conv_shortcut", "nin_shortcut")
        out[f"first_stage_model.{new}"] = value
    return out


def save_single_file(pipe, path: str | os.PathLike) -> Path:
    """Save an SD 1.x-layout inpainting pipeline (UNet, VAE, one CLIPTextModel) as ONE original-layout .safetensors.

    The names are those of the original Stable Diffusion checkpoints (`model.diffusion_model.*`,
    `first_stage_model.*`, `cond_stage_model.transformer.*`), which diffusers' `from_single_file` converts back.
    Only the weights are in the file; tokenizer, scheduler and component configs come from a `config` folder.
    """
    from safetensors.torch import save_file

    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError("save_single_file writes SD 1.x-layout checkpoints (one CLIP text encoder), not SDXL")
    tensors = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    tensors.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
    return path


def save_config_folder(pipe, folder: str | os.PathLike) -> Path:
    """Save the pipeline's configs, tokenizer and scheduler without any weights: the `config` of a single file."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


def build_tiny_safety_checker(seed: int = 0, flag_everything: bool = False):
    """SD 1.x's NSFW safety checker at a tiny size (random weights) and its image processor. `flag_everything`
    sets every concept threshold below any similarity, so each image is flagged (for tests of the verdicts)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    if flag_everything:
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-10.0)
            checker.special_care_embeds_weights.fill_(-10.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor
