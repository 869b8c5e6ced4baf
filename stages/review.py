"""The review app (not a DVC stage: people answer in it): blind side-by-side pairs of the current view's images, each
answer appended to the ratings ledger that the report stage reads. Ctrl+C stops it; every answer is already saved.

    python stages/review.py [review.port=8765 paths.generate=... paths.ratings=...]    (or: make review)

Binding anything but loopback needs review.allow_remote=true and a token in INPAINT_REVIEW_TOKEN.
"""

import os
import sys
from pathlib import Path

from inpaint_sweep import cli
from inpaint_sweep.config import load_config
from inpaint_sweep.errors import RunError
from inpaint_sweep.review import Review, make_server, open_view, url_of
from inpaint_sweep.validate import check_review_config

TOKEN_ENV = "INPAINT_REVIEW_TOKEN"


@cli.one_line_errors
def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    r = cfg.review
    token = os.environ.get(TOKEN_ENV) or None
    check_review_config(r, token)
    cells = Path(cfg.paths.generate) / "cells"
    review = Review(open_view(cells), cfg.paths.ratings, r.thumb_width)
    try:
        server = make_server(review, r.host, r.port, token)
    except OSError as e:
        raise RunError(f"cannot listen on {r.host}:{r.port} ({e.strerror or e}): choose another review.port "
                           "(0 = a free one)") from e
    s = review.state("")
    print(f"review: {s['images']} image(s) in {s['cases']} case(s) from {cells}; {s['answers']} answer(s) about them "
          f"in {Path(cfg.paths.ratings) / 'answers.jsonl'}", flush=True)
    print(f"open {url_of(server, token)}  (Ctrl+C stops; every answer is saved as it is given)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("review: stopped", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    if cli.help_requested(sys.argv[1:]):
        cli.print_help("review", sys.argv[1:])
    else:
        main(sys.argv[1:])
