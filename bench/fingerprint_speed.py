"""Cost of a model folder's fingerprint (identity.py): the first time (sha256 of every byte) and cached (one stat per
file), for an SDXL-sized folder.

    python bench/fingerprint_speed.py [--gb 7] [--repeat 5]

The folder mimics SDXL's layout (unet 5 GB, two text encoders, VAE, configs), filled with written random blocks
(1 MiB repeated: the disk holds every byte, so the first fingerprint reads it all; it may come from the page cache).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from inpaint_sweep.identity import Digests, folder_fingerprint

LAYOUT = {  # share of the total size, after SDXL inpainting's safetensors files
    "unet/diffusion_pytorch_model.safetensors": 0.745,
    "text_encoder_2/model.safetensors": 0.2,
    "text_encoder/model.safetensors": 0.036,
    "vae/diffusion_pytorch_model.safetensors": 0.019,
}
CONFIGS = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
           "text_encoder_2/config.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
           "tokenizer_2/vocab.json"]


def make_folder(root: Path, gb: float) -> None:
    block = os.urandom(1 << 20)
    for name, share in LAYOUT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(int(gb * 1024 * share)):
                f.write(block)
    for name in CONFIGS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('{"_class_name": "x"}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "sdxl", Path(tmp) / "digests.json"
        make_folder(folder, args.gb)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30
        start = time.perf_counter()
        digests = Digests(cache)
        first = folder_fingerprint(folder, digests)
        digests.save()
        cold = time.perf_counter() - start
        cached = []
        for _ in range(args.repeat):  # a new process's view: the digest cache read from its file
            start = time.perf_counter()
            assert folder_fingerprint(folder, Digests(cache)) == first
            cached.append(time.perf_counter() - start)
        print(f"folder: {size:.2f} GiB in {sum(1 for p in folder.rglob('*') if p.is_file())} files")
        print(f"first fingerprint (every byte hashed): {cold:.1f} s ({size / cold:.2f} GiB/s)")
        print(f"cached fingerprint: {', '.join(f'{t * 1000:.1f}' for t in cached)} ms "
              f"(median {statistics.median(cached) * 1000:.1f} ms; target < 1 s)")


if __name__ == "__main__":
    main()
