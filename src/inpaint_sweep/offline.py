"""Nothing reaches the network by default: the switches every library here honours, set before they are imported.

Each is a default (os.environ.setdefault): export the variable yourself to change it, e.g. HF_HUB_OFFLINE=0 to let a
hub preset download its weights once.
"""

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub/diffusers/transformers: local files only
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",  # ultralytics: no online checks, no asset downloads, no events
    "COMET_ERROR_TRACKING_ENABLE": "false",  # comet_ml: no Sentry error reports
    "COMET_DISABLE_AUTO_LOGGING": "1",  # comet_ml: no framework monkey-patching
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}


def set_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
