"""Where a cell was computed: the machine, its accelerator, the library builds and, under Slurm, the job.

Stored in each computed cell's record (`machine`), shown in the report and sent to Comet. Never part of a cell's
identity (identity.py hashes the config, the model's files and the case): a cell made on one machine stays valid on
another, but its pixels are bit-identical only on the same kind of machine with the same library versions — CPU
kernels differ by instruction set (README, "Reproducibility").
"""

from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

# Slurm's own variables for the job a process runs in, and the record keys they go under (sbatch(1), "OUTPUT
# ENVIRONMENT VARIABLES"). SLURM_ARRAY_JOB_ID is the array's id; SLURM_JOB_ID that of this one task.
SLURM = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
         "slurm_array_task_id": "SLURM_ARRAY_TASK_ID", "slurm_node": "SLURMD_NODENAME"}
LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "numpy", "pillow", "comet_ml")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (/proc/driver/nvidia/version, written by the driver itself), or None."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            words = f.readline().split()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..." : the first dotted number.
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


@lru_cache(maxsize=1)
def machine_info() -> dict:
    """This process's machine, collected once: CPU model and instruction-set level torch dispatches its kernels to,
    GPU name, NVIDIA driver, CUDA and cuDNN versions (when CUDA is available), the torch build and library versions,
    the hostname and the Slurm job, array task and node when under Slurm. Keys with no value are left out."""
    import torch

    info = {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512: which kernels ran
        "cpu_count": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch_build": torch.__version__,
        "torch_cuda": torch.version.cuda,  # the CUDA this torch build was compiled against (None: CPU-only build)
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_driver"] = nvidia_driver()
        info["cudnn"] = torch.backends.cudnn.version()
    info["libraries"] = library_versions()
    info.update({key: os.environ[var] for key, var in SLURM.items() if os.environ.get(var)})
    return {k: v for k, v in info.items() if v is not None}


def describe(machine: dict) -> str:
    """One line for people: `host · CPU (ISA) · GPU (driver, CUDA) · torch · slurm job`."""
    if not machine:
        return ""
    parts = [machine.get("hostname", "?"), f"{machine.get('cpu', '?')} ({machine.get('cpu_capability', '?')})"]
    if machine.get("gpu"):
        driver, cuda = machine.get("gpu_driver", "?"), machine.get("torch_cuda", "?")
        parts.append(f"{machine['gpu']} (driver {driver}, CUDA {cuda})")
    parts.append(f"torch {machine.get('torch_build', '?')}")
    if machine.get("slurm_job_id"):
        task = machine.get("slurm_array_task_id")
        job = (f"{machine['slurm_array_job_id']}_{task}" if machine.get("slurm_array_job_id") and task
               else machine["slurm_job_id"])
        parts.append(f"slurm job {job} on {machine.get('slurm_node', '?')}")
    return " · ".join(parts)
