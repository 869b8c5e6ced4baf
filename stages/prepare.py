"""Stage 1, prepare: image + box -> mask, overlay and record per case (the photo upright, as 8-bit RGB).

    python stages/prepare.py                                  # the cases and mask settings of params.yaml
    python stages/prepare.py mask.method=ellipse              # any key below as key=value
    python stages/prepare.py cases=data/cases_many.yaml       # another manifest
"""

import sys

from inpaint_sweep import cli
from inpaint_sweep.cases import load_cases
from inpaint_sweep.config import load_config
from inpaint_sweep.validate import check_config
from inpaint_sweep.masks import prepare


@cli.one_line_errors
def main(overrides: list[str]) -> list[dict]:
    cfg = load_config(overrides)
    check_config(cfg)
    cases = load_cases(cfg.cases)
    m = cfg.mask
    records = prepare(
        cases,
        cfg.paths.prepare,
        method=m.method,
        weights=m.weights,
        sam_weights=m.sam_weights,
        conf=m.conf,
        max_det=m.max_det,
        classes=list(m.classes),
        on_miss=m.on_miss,
        clip=m.clip_to_box,
        holes=m.fill_holes,
        min_area=m.min_area,
        overlay_alpha=m.overlay_alpha,
    )  # mask.dilate and mask.feather are generate's: applied to this base mask per cell (README "Masks")
    for r in records:
        found = f" {r['class'] or 'object'} {r['confidence']:.2f}" if r["confidence"] is not None else ""
        why = "" if r["method"] == m.method else f" ({r['method_reason']})"
        print(f"  {r['id']}: {r['method']}{found}, IoU with box {r['iou_with_box']:.2f}, {r['mask_area']} px{why}")
    print(f"prepare: {len(records)} case(s) -> {cfg.paths.prepare} (mask.method={m.method}; contact_sheet.png, cases.csv)")
    return records


if __name__ == "__main__":
    if cli.help_requested(sys.argv[1:]):
        cli.print_help("prepare", sys.argv[1:])
    else:
        main(sys.argv[1:])
