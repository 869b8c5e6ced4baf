"""Memory of the one resident pipeline: RSS after loading checkpoint A, after loading B through the runner (which
releases A), and after loading A again while B is still held outside the runner (what two resident pipelines cost).

    python bench/model_eviction.py

Two random tiny SD inpainting checkpoints are saved to a temporary folder (tiny_model.build_tiny_pipeline); CPU.
"""

import argparse
import gc
import tempfile
import weakref
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from inpaint_sweep.config import load_config, model_config
    from inpaint_sweep.runner import SweepRunner
    from inpaint_sweep.tiny_model import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed, name in ((1, "a"), (2, "b")):
            build_tiny_pipeline(seed).save_pretrained(tmp / name, safe_serialization=True)
        gc.collect()
        cfg = load_config([f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store", "tracking.comet=false"])
        run = SweepRunner(cfg, "bench", lock=False)
        a, b = (model_config("pretrained", id=str(tmp / n), size=64, device="cpu") for n in ("a", "b"))
        base = rss_mb()
        first = weakref.ref(run.model(a).pipe)
        params = sum(p.numel() for p in first().unet.parameters()) + sum(p.numel() for p in first().vae.parameters())
        after_a = rss_mb()
        held = run.model(b)  # the runner releases A
        gc.collect()
        after_b = rss_mb()
        print(f"checkpoint: {params / 1e6:.2f} M UNet+VAE parameters")
        print(f"RSS before any load {base:.0f} MB; A loaded {after_a:.0f} MB; B loaded, A released "
              f"{after_b:.0f} MB; A freed: {first() is None}")
        from inpaint_sweep.model import load_model

        both = load_model(a)  # A again while B is held: two resident pipelines
        gc.collect()
        print(f"two pipelines resident (no eviction) {rss_mb():.0f} MB")
        del both, held
        run.close(completed=False)


if __name__ == "__main__":
    main()
