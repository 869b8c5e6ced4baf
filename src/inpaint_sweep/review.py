"""The review app: two images of one case side by side, settings hidden, sides at random; a person answers left
better / right better / tie / both bad (keys 1 2 3 0) and the answer is appended to the ratings ledger (ratings.py).

One `Review` object per server owns what the server knows: the view (the cells the report reads), how far it has
read the ledger, and the pairs it has handed to each rater. The ledger is the only lasting state, so a restarted
server, or a second server on the same ledger, reads it and goes on: a rater never sees a pair again before every
other pair of the view.

Which pair next: the image with the fewest answers, against the partner that differs from it in one axis (so the
answer speaks about that setting) and whose outcome is least certain under the current ranking (the closest
strength); a pair this rater has seen comes only when no unseen pair is left.

Served by the standard library's ThreadingHTTPServer: JSON endpoints and one page of plain JavaScript, nothing
from a network. Pictures are JPEG thumbnails first (review.thumb_width), the stored PNG on zoom.
"""

from __future__ import annotations

import hmac
import io
import json
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

from . import ratings
from .errors import ConfigError, RunError
from .images import mask_outline

THUMBS_KEPT = 512  # thumbnails kept in memory (a few hundred kB each): a rater's recent pairs and the next ones
COOKIE = "review_token"


# -------------------------------------------------------------------------------------------------------------- view


@dataclass(frozen=True)
class ViewImage:
    """One ok image of the view: its key (cell id, seed), its case, its file, the cell's photo and mask."""

    key: tuple[str, int]
    case: str
    path: str
    photo: str
    mask: str


@dataclass
class View:
    """The images a person can be asked about (ok images of the view's cells) and what varied among them."""

    cells_dir: Path
    images: list[ViewImage]
    axes: list[str]
    codes: np.ndarray  # (images, axes): each image's value of each axis as a small integer
    values: dict[str, dict[tuple[str, int], object]]  # axis -> image key -> its value

    def __post_init__(self) -> None:
        self.at = {image.key: k for k, image in enumerate(self.images)}
        self.by_case: dict[str, np.ndarray] = {}
        for k, image in enumerate(self.images):
            self.by_case.setdefault(image.case, []).append(k)  # type: ignore[arg-type]
        self.by_case = {case: np.array(members) for case, members in self.by_case.items()}


def open_view(cells_dir: str | Path) -> View:
    """The view's ok images and axes, as the report finds them (report.load_records, report.find_axes)."""
    from .report import find_axes, load_records, value_codes

    df, keys = load_records(cells_dir)
    axes, _ = find_axes(df, keys)
    ok = df[df["status"] == "ok"].reset_index(drop=True)
    images = [ViewImage(key=(c, int(s)), case=str(case), path=p, photo=photo, mask=mask)
              for c, s, case, p, photo, mask in zip(ok["cell_id"], ok["seed"], ok["case"], ok["image"], ok["input"],
                                                    ok["mask"])]
    codes = np.stack([value_codes(ok[a]) for a in axes], axis=1) if axes else np.zeros((len(ok), 0), np.int64)
    values = {a: dict(zip((i.key for i in images), ok[a])) for a in axes}
    return View(cells_dir=Path(cells_dir), images=images, axes=axes, codes=codes, values=values)


# ------------------------------------------------------------------------------------------------------------ review


class Review:
    """The state of one review server (see the module's docstring); every method is safe from several threads."""

    def __init__(self, view: View, ratings_dir: str | Path, thumb_width: int, seed: int | None = None):
        if not view.images:
            raise RunError(f"no images to review in {view.cells_dir}: run generate first (`make repro` or "
                           "`python stages/generate.py -m`)")
        self.view, self.ratings_dir, self.thumb_width = view, Path(ratings_dir), thumb_width
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.tiebreak = np.array([self.random.random() for _ in view.images])
        self.offset = 0
        self.answers: list[ratings.Answer] = []  # every answer in the ledger, this view's or not
        self.counts = np.zeros(len(view.images), dtype=np.int64)  # answers about each image of the view
        self.answered: dict[str, dict[tuple[int, int], int]] = {}  # rater -> pair (view indices) -> times answered
        self.issued: dict[str, set[tuple[int, int]]] = {}  # rater -> pairs handed out by this server
        self.strength = np.zeros(len(view.images))
        self.fitted = 0  # len(answers) when strength was fitted
        self.fitting: threading.Thread | None = None  # the refit running, if one is
        self.thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self.thumb_lock = threading.Lock()
        with self.lock:
            self._refresh()

    # 1. The ledger: read what was appended since last time (by this server or another).
    def _refresh(self) -> None:
        new, self.offset = ratings.read_answers(self.ratings_dir, self.offset)
        at = self.view.at
        for a in new:
            self.answers.append(a)
            if a.left in at and a.right in at:
                i, j = at[a.left], at[a.right]
                self.counts[[i, j]] += 1
                pair = (min(i, j), max(i, j))
                mine = self.answered.setdefault(a.rater, {})
                mine[pair] = mine.get(pair, 0) + 1

    def _strengths(self) -> np.ndarray:
        """The Bradley-Terry strengths of the view's images (0 for unrated ones) as last fitted. A refit of the
        answers that came in since runs in a thread of its own: its cost grows with the rated images, and a pair
        chosen on strengths a few answers old is as good, while the rater does not wait."""
        if self.fitted != len(self.answers) and self.fitting is None:
            self.fitting = threading.Thread(target=self._refit, args=(list(self.answers),), daemon=True)
            self.fitting.start()
        return self.strength

    def _refit(self, answers: list[ratings.Answer]) -> None:
        at = self.view.at
        used = [a for a in answers if a.left in at and a.right in at]
        rated = sorted({at[k] for a in used for k in (a.left, a.right)})
        local = {self.view.images[k].key: n for n, k in enumerate(rated)}
        strength = np.zeros(len(self.view.images))
        try:
            if rated:
                strength[rated] = ratings.fit(len(rated), used, local)
        finally:
            with self.lock:
                self.strength, self.fitted, self.fitting = strength, len(answers), None

    def state(self, rater: str) -> dict:
        with self.lock:
            self._refresh()
            mine = self.answered.get(rater, {})
            return {"rater": rater, "answered": sum(mine.values()), "answers": int(self.counts.sum() // 2),
                    "images": len(self.view.images), "cases": len(self.view.by_case)}

    # 2. The next pair for a rater.
    def next_pair(self, rater: str) -> dict | None:
        """The most informative pair this rater has seen least (see the module's docstring), sides at random; None
        when the view has no pair (one image per case)."""
        with self.lock:
            self._refresh()
            strength = self._strengths()
            answered, issued = self.answered.get(rater, {}), self.issued.setdefault(rater, set())

            def seen(pair: tuple[int, int]) -> int:
                return max(answered.get(pair, 0), 1 if pair in issued else 0)

            order = np.lexsort((self.tiebreak, self.counts))  # fewest answers first
            cases = self.view.by_case
            # The least times any pair was seen by this rater; 0 unless every pair has been seen.
            for level in range(0, max([*answered.values(), 1]) + 1):
                for a in order:
                    partners = cases[self.view.images[a].case]
                    partners = partners[partners != a]
                    if not len(partners):
                        continue
                    free = np.array([seen((min(a, b), max(a, b))) <= level for b in partners])
                    if not free.any():
                        continue
                    partners = partners[free]
                    differ = (self.view.codes[partners] != self.view.codes[a]).sum(axis=1)
                    gap = np.abs(strength[partners] - strength[a])
                    best = partners[np.lexsort((self.tiebreak[partners], self.counts[partners], gap, differ != 1))[0]]
                    pair = (min(a, best), max(a, best))
                    issued.add(pair)
                    left, right = (a, best) if self.random.random() < 0.5 else (best, a)
                    return self._pair_json(int(left), int(right))
            return None

    def _pair_json(self, left: int, right: int) -> dict:
        images = self.view.images

        def side(k: int) -> dict:
            cell, seed = images[k].key
            return {"cell_id": cell, "seed": seed, "thumb": f"image/{cell}/{seed}?size=thumb",
                    "full": f"image/{cell}/{seed}?size=full", "outline": f"outline/{cell}/{seed}"}

        return {"case": images[left].case, "left": side(left), "right": side(right),
                "photo": f"photo/{images[left].key[0]}/{images[left].key[1]}"}

    # 3. An answer: checked against the view, appended (fsync'd) before it is acknowledged.
    def answer(self, rater: str, case: str, left: tuple[str, int], right: tuple[str, int], said: str) -> dict:
        for cell, seed in (left, right):
            if (cell, seed) not in self.view.at:
                raise ConfigError(f"cell {cell} seed {seed} is not in the view ({self.view.cells_dir}): generate "
                                  "has changed it since this page loaded; reload the page")
        for key in (left, right):
            if self.view.images[self.view.at[key]].case != case:
                raise ConfigError(f"cell {key[0]} seed {key[1]} is not an image of case {case!r}")
        answer = ratings.new_answer(rater, case, left, right, said)
        ratings.append(self.ratings_dir, answer)
        return self.state(answer.rater)

    # 4. Pictures.
    def image_file(self, key: tuple[str, int]) -> Path:
        if key not in self.view.at:
            raise KeyError(key)
        return Path(self.view.images[self.view.at[key]].path)

    def thumbnail(self, key: tuple[str, int], which: str = "image") -> bytes:
        """A picture of an image at review.thumb_width: the output (JPEG), the case's photo (JPEG) or the mask's
        outline (a transparent PNG), made once and kept (THUMBS_KEPT)."""
        cache_key = (which, key)
        with self.thumb_lock:
            if cache_key in self.thumbs:
                self.thumbs.move_to_end(cache_key)
                return self.thumbs[cache_key]
        image = self.view.images[self.view.at[key]]
        data = _outline(image.mask, self.thumb_width) if which == "outline" else \
            _jpeg(image.photo if which == "photo" else image.path, self.thumb_width)
        with self.thumb_lock:
            self.thumbs[cache_key] = data
            while len(self.thumbs) > THUMBS_KEPT:
                self.thumbs.popitem(last=False)
        return data


def _jpeg(path: str, width: int) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
    return out.getvalue()


def _outline(mask_path: str, width: int) -> bytes:
    """The mask's edge, 2 pixels wide at `width`, as a transparent PNG (drawn over the pictures)."""
    with Image.open(mask_path) as m:
        m = m.convert("L")
        size = (width, max(1, round(m.height * width / m.width)))
        small = np.asarray(m.resize(size, Image.Resampling.BILINEAR)) > 127
    out = io.BytesIO()
    mask_outline(small, width=2).save(out, "PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------------ server


def make_server(review: Review, host: str, port: int, token: str | None = None) -> ThreadingHTTPServer:
    """The HTTP server of a Review (serve_forever() runs it). With a token, every request must carry it: the page
    as ?token=..., which sets a cookie for the rest."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "inpaint-sweep-review"

        def log_message(self, format, *args):  # noqa: A002 (the base class's name): one line per request is noise
            pass

        def _send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store" if kind.startswith(("application/json", "text/html"))
                             else "private, max-age=3600")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _allowed(self, query: dict) -> bool:
            if token is None:
                return True
            given = query.get("token", [""])[0] or SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
            given = given.value if hasattr(given, "value") else given
            return hmac.compare_digest(str(given or ""), token)

        def do_GET(self):  # noqa: N802 (the standard library's name)
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if not self._allowed(query):
                return self._json(HTTPStatus.FORBIDDEN, {"error": "this review app needs its token: open the URL "
                                                                  "printed at start, with ?token=..."})
            parts = url.path.strip("/").split("/")
            rater = query.get("rater", [""])[0]
            try:
                if url.path == "/":
                    cookie = {"Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"} if token else {}
                    return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8", cookie)
                if url.path == "/api/state":
                    return self._json(HTTPStatus.OK, review.state(rater))
                if url.path == "/api/pair":
                    pair = review.next_pair(rater)
                    return self._json(HTTPStatus.OK, {"pair": pair, **review.state(rater)})
                if len(parts) == 3 and parts[0] in ("image", "photo", "outline"):
                    key = (parts[1], int(parts[2]))
                    if parts[0] == "image" and query.get("size", [""])[0] == "full":
                        return self._send(HTTPStatus.OK, review.image_file(key).read_bytes(), "image/png")
                    kind = "image/png" if parts[0] == "outline" else "image/jpeg"
                    return self._send(HTTPStatus.OK, review.thumbnail(key, parts[0]), kind)
            except (KeyError, ValueError):
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"{url.path} is not an image of the view"})
            except OSError as e:
                return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"could not read {url.path}: {e}"})
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            if not self._allowed(parse_qs(url.query)):
                return self._json(HTTPStatus.FORBIDDEN, {"error": "this review app needs its token"})
            # A custom header: a page of another site cannot send it without the browser asking first (CORS), so
            # no other page in the rater's browser can answer in their name.
            if url.path != "/api/answer" or self.headers.get("X-Review") != "1":
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {url.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                left, right = body["left"], body["right"]
                state = review.answer(str(body["rater"]), str(body["case"]), (str(left["cell_id"]), int(left["seed"])),
                                      (str(right["cell_id"]), int(right["seed"])), str(body["answer"]))
            except ConfigError as e:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            except (ValueError, KeyError, TypeError) as e:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"an answer needs rater, case, left, right and "
                                                                    f"answer ({type(e).__name__}: {e})"})
            return self._json(HTTPStatus.OK, state)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer, token: str | None) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


PAGE = Path(__file__).with_name("review_page.html").read_text(encoding="utf-8")  # plain HTML, CSS and JavaScript
