"""Optional CLIP score: how well the repainted region matches its prompt, by a CLIP checkpoint you supply.

Off unless `report.clip_model` names a CLIP folder (or a hub id already in the local cache; nothing is downloaded while
HF_HUB_OFFLINE=1). The score is 100 x max(cosine(image embedding, prompt embedding), 0), as in torchmetrics'
CLIPScore, computed on the crop of the mask's bounding box, i.e. on what the model painted plus a little context.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .config import ConfigError


def load_clip(name: str):
    """(model, tokenizer, image processor) of a CLIP checkpoint; a load failure is a ConfigError naming it."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    try:
        model = CLIPModel.from_pretrained(name).eval()
        tokenizer = AutoTokenizer.from_pretrained(name)
        processor = CLIPImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"report.clip_model={name!r} could not be loaded offline: {first}") from e
    return model, tokenizer, processor


def mask_crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image cropped to the bounding box of the mask (the whole image when the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return image
    return image.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def clip_cosines(clip, images: list[Image.Image], prompts: list[str], batch_size: int = 16) -> list[float]:
    """Cosine similarity of each image's CLIP embedding with its own prompt's, in [-1, 1]."""
    import torch

    model, tokenizer, processor = clip
    cosines: list[float] = []
    for i in range(0, len(images), batch_size):
        batch_images, batch_prompts = images[i : i + batch_size], prompts[i : i + batch_size]
        pixels = processor(images=[im.convert("RGB") for im in batch_images], return_tensors="pt")["pixel_values"]
        text = tokenizer(batch_prompts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        # image_embeds and text_embeds come L2-normalised: their row-wise dot product is the cosine.
        cosines += (out.image_embeds * out.text_embeds).sum(dim=-1).tolist()
    return cosines


def clip_scores(clip, images: list[Image.Image], prompts: list[str]) -> list[float]:
    """CLIP score of each image against its own prompt: 100 x max(cosine, 0), in [0, 100]."""
    return [100 * max(c, 0.0) for c in clip_cosines(clip, images, prompts)]
