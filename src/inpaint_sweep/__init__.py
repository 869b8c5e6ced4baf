"""inpaint-sweep: reproducible Stable Diffusion inpainting sweeps (prepare -> generate -> report)."""

from .offline import set_offline_defaults

set_offline_defaults()  # before any of torch/diffusers/ultralytics/comet_ml is imported

__version__ = "0.1.0"
