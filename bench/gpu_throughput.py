"""GPU throughput: the generate engine vs a notebook-style loop, on the full-size SD2-inpainting architecture.

No weights are downloaded: the UNet, VAE and text encoder are built from SD2-inpainting's published configs with
random weights (the arithmetic is what costs time, not the values), saved once to a local folder.

- baseline (notebook style): float32, the pipeline rebuilt with from_pretrained for every cell, one image per call;
- engine (what stages/generate.py does): pipeline loaded once, float16 on CUDA, all seeds of a cell in one batched
  call (inpaint_sweep.inpaint.inpaint), SDPA attention (diffusers' default).
Prints images/s of each and one ratio (engine / baseline); target >= 2 on a GPU.

    python bench/gpu_throughput.py                                   # on a GPU: 512 px, 30 steps
    python bench/gpu_throughput.py --arch tiny --size 64 --steps 2   # smoke run on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from PIL import Image

import inpaint_sweep  # noqa: F401  (offline switches)


def build_sd2_inpaint_architecture():
    """stabilityai/stable-diffusion-2-inpainting's architecture (configs as published), random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from inpaint_sweep.tiny_model import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, projection_dim=512, hidden_act="gelu", max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def main() -> None:
    import torch
    from diffusers import AutoPipelineForInpainting

    from inpaint_sweep.inpaint import inpaint
    from inpaint_sweep.model import resolve_device
    from inpaint_sweep.tiny_model import build_tiny_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("sd2", "tiny"), default="sd2")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cells", type=int, default=3, help="grid cells (each a different guidance)")
    parser.add_argument("--seeds", type=int, default=4, help="images per cell")
    args = parser.parse_args()
    device = resolve_device("auto")
    engine_dtype = torch.float16 if device == "cuda" else torch.float32

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    mask = np.zeros((args.size, args.size), bool)
    mask[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = True
    guidances = [5.0 + 2.5 * i for i in range(args.cells)]
    seeds = list(range(args.seeds))
    images = args.cells * args.seeds

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as folder:
        (build_sd2_inpaint_architecture() if args.arch == "sd2" else build_tiny_pipeline(0)).save_pretrained(folder)

        # Notebook style: rebuild per cell, float32, one image per call.
        start = time.perf_counter()
        for guidance in guidances:
            pipe = AutoPipelineForInpainting.from_pretrained(folder, torch_dtype=torch.float32).to(device)
            pipe.set_progress_bar_config(disable=True)
            for seed in seeds:
                pipe(prompt="a realistic green dragon", negative_prompt="cartoon", image=photo,
                     mask_image=Image.fromarray(mask.astype(np.uint8) * 255), height=args.size, width=args.size,
                     num_inference_steps=args.steps, guidance_scale=guidance,
                     generator=torch.Generator(device).manual_seed(seed))
            del pipe
        sync()
        baseline = images / (time.perf_counter() - start)

        # The engine: one load, half precision on GPU, seeds batched per cell.
        start = time.perf_counter()
        pipe = AutoPipelineForInpainting.from_pretrained(folder, torch_dtype=engine_dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        for guidance in guidances:
            inpaint(pipe, photo, mask, "a realistic green dragon", "cartoon", args.steps, guidance, 1.0, seeds,
                    args.size, device)
        sync()
        engine = images / (time.perf_counter() - start)

    print(f"device={device} arch={args.arch} size={args.size} steps={args.steps} images={images}")
    print(f"baseline {baseline:.3f} images/s, engine {engine:.3f} images/s")
    print(f"engine / notebook throughput ratio: {engine / baseline:.2f}")


if __name__ == "__main__":
    main()
