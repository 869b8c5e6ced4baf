"""People's judgements: the ratings ledger (one JSON line per answer, appended, never rewritten) and the ranking made
from it (Bradley-Terry strengths per image with bootstrap intervals, per-axis figures, agreement between raters).

An answer names its two images by cell id and seed. A cell id is the cell's content identity (identity.py), so an
answer follows its cell into any grid that shows it again, and a cell whose identity changed (new weights, new
settings) starts unrated. The ledger is the only state: the review app appends to it and the report reads it.

Ties: an answer "tie" or "both bad" says neither image is better; it enters the Bradley-Terry fit as half a win each
way (a decisive answer as a whole win), the usual way of counting ties with a model that has none.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

LEDGER = "answers.jsonl"  # under paths.ratings
ANSWERS = ("left", "right", "tie", "both_bad")  # keys 1, 2, 3, 0 in the review app
BOOTSTRAP = 200  # resamples of the answers behind every interval
LEVEL = 0.95  # the intervals' coverage
ALPHA = 0.05  # choix's regularisation: keeps the strength of an image that never lost (or never won) finite
SEED = 0  # of the bootstrap's resampling: the same answers give the same intervals


@dataclass(frozen=True)
class Answer:
    """One answer: who, when, about which case, which image was on each side, and what they said."""

    rater: str
    time: str
    case: str
    left: tuple[str, int]  # (cell id, seed)
    right: tuple[str, int]
    answer: str  # one of ANSWERS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["left"] = {"cell_id": self.left[0], "seed": self.left[1]}
        d["right"] = {"cell_id": self.right[0], "seed": self.right[1]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Answer":
        answer = cls(rater=str(d["rater"]), time=str(d["time"]), case=str(d["case"]),
                     left=(str(d["left"]["cell_id"]), int(d["left"]["seed"])),
                     right=(str(d["right"]["cell_id"]), int(d["right"]["seed"])), answer=str(d["answer"]))
        if answer.answer not in ANSWERS:
            raise ValueError(f"answer {answer.answer!r} is not one of {', '.join(ANSWERS)}")
        return answer

    @property
    def pair(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """The two images in a fixed order, whichever side each was shown on."""
        return tuple(sorted((self.left, self.right)))  # type: ignore[return-value]


def new_answer(rater: str, case: str, left: tuple[str, int], right: tuple[str, int], answer: str) -> Answer:
    """An answer made now; ConfigError naming what is wrong with a bad one (the app's one line to the rater)."""
    rater = rater.strip()
    if not rater or len(rater) > 80 or any(ch in rater for ch in "\n\r\t"):
        raise ConfigError(f"rater name {rater!r} must be 1 to 80 characters on one line")
    if answer not in ANSWERS:
        raise ConfigError(f"answer {answer!r} is not one of {', '.join(ANSWERS)}")
    if left == right:
        raise ConfigError(f"an answer compares two different images, got {left[0]} seed {left[1]} twice")
    return Answer(rater=rater, time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), case=case,
                  left=left, right=right, answer=answer)


# ------------------------------------------------------------------------------------------------------------ ledger


def ledger_path(ratings_dir: str | Path) -> Path:
    return Path(ratings_dir) / LEDGER


def append(ratings_dir: str | Path, answer: Answer) -> None:
    """Append one answer under an exclusive lock and fsync it before returning, so that two browsers, two servers or
    a killed server lose nothing that was acknowledged. A torn last line (a writer killed mid-line) is closed with a
    newline first, so it stays one bad line that readers skip instead of swallowing this answer."""
    path = ledger_path(ratings_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(answer.to_dict(), sort_keys=True, ensure_ascii=False) + "\n"
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_answers(ratings_dir: str | Path, start: int = 0) -> tuple[list[Answer], int]:
    """The answers in the ledger from byte `start` on, and the offset to read from next time. A line that is not a
    whole answer (a torn last line from a killed writer, a bad hand edit) is skipped with a warning naming it; a last
    line without its newline is left for the next read (its writer may still be writing it)."""
    path = ledger_path(ratings_dir)
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            try:
                f.seek(start)
                data = f.read()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    answers = []
    line_no = 0
    for raw in data[:end].splitlines():
        line_no += 1
        if not raw.strip():
            continue
        try:
            answers.append(Answer.from_dict(json.loads(raw)))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ratings ledger %s: skipped a line that is not a whole answer (%s: %s): %.80r", path,
                        type(e).__name__, e, raw.decode("utf-8", "replace"))
    if end < len(data):
        log.warning("ratings ledger %s: its last line is cut off (a writer stopped mid-line); it is not counted",
                    path)
    return answers, start + end


# ----------------------------------------------------------------------------------------------------------- ranking


@dataclass
class Ranking:
    """Strength (log scale, Bradley-Terry) of every image that has answers, with its interval and answer count."""

    images: list[tuple[str, int]]  # (cell id, seed), in the order of the arrays
    strength: np.ndarray
    low: np.ndarray
    high: np.ndarray
    answers: np.ndarray  # answers each image took part in
    samples: np.ndarray  # bootstrap strengths, (BOOTSTRAP, images): what per-axis intervals are made from
    used: int  # answers about two images of the view
    ignored: int  # answers about an image that is not in the view (another grid, or a cell whose identity changed)
    raters: int

    def index(self) -> dict[tuple[str, int], int]:
        return {image: k for k, image in enumerate(self.images)}


def comparisons(answers: list[Answer], at: dict[tuple[str, int], int]) -> list[tuple[int, int]]:
    """choix's pairwise data: a decisive answer as two wins of the preferred image, a tie as one win each way."""
    data = []
    for a in answers:
        left, right = at[a.left], at[a.right]
        if a.answer == "left":
            data += [(left, right), (left, right)]
        elif a.answer == "right":
            data += [(right, left), (right, left)]
        else:
            data += [(left, right), (right, left)]
    return data


def fit(n_items: int, answers: list[Answer], at: dict[tuple[str, int], int]) -> np.ndarray:
    """Bradley-Terry strengths (log scale, mean 0) from answers, by choix's I-LSR with a light regularisation."""
    import choix

    if not answers:
        return np.zeros(n_items)
    return np.asarray(choix.ilsr_pairwise(n_items, comparisons(answers, at), alpha=ALPHA), dtype=float)


def rank(answers: list[Answer], view: set[tuple[str, int]], bootstrap: int = BOOTSTRAP) -> Ranking:
    """The ranking of the view's images from the answers about two of them: strengths, bootstrap intervals
    (answers resampled with replacement, LEVEL percentile intervals) and answer counts."""
    used = [a for a in answers if a.left in view and a.right in view]
    images = sorted({image for a in used for image in (a.left, a.right)})
    at = {image: k for k, image in enumerate(images)}
    n = len(images)
    strength = fit(n, used, at)
    rng = np.random.default_rng(SEED)
    samples = np.empty((bootstrap if used else 0, n))
    for b in range(len(samples)):
        samples[b] = fit(n, [used[k] for k in rng.integers(0, len(used), len(used))], at)
    tail = (1 - LEVEL) / 2 * 100
    low, high = (np.percentile(samples, [tail, 100 - tail], axis=0) if len(samples) else (np.zeros(0), np.zeros(0)))
    counts = np.zeros(n, dtype=int)
    for a in used:
        counts[at[a.left]] += 1
        counts[at[a.right]] += 1
    return Ranking(images=images, strength=strength, low=np.asarray(low), high=np.asarray(high), answers=counts,
                   samples=samples, used=len(used), ignored=len(answers) - len(used),
                   raters=len({a.rater for a in used}))


def group_figures(ranking: Ranking, members: list[int]) -> dict:
    """The mean strength of a group of rated images (one value of an axis), its interval from the same bootstrap
    resamples as the images' own, and how many images and answers back it."""
    if not members:
        return {"score": math.nan, "low": math.nan, "high": math.nan, "images": 0, "answers": 0}
    mean = float(ranking.strength[members].mean())
    tail = (1 - LEVEL) / 2 * 100
    if len(ranking.samples):
        per_sample = ranking.samples[:, members].mean(axis=1)
        low, high = np.percentile(per_sample, [tail, 100 - tail])
    else:
        low = high = math.nan
    return {"score": mean, "low": float(low), "high": float(high), "images": len(members),
            "answers": int(ranking.answers[members].sum())}


def axis_figures(ranking: Ranking, values: dict[str, dict[tuple[str, int], object]]) -> dict[str, dict]:
    """Per axis: for each of its values the group figures of its rated images, the winner and how sure: the share
    of bootstrap resamples in which the winner's mean strength is the highest of the axis' values."""
    out = {}
    for axis, value_of in values.items():
        groups: dict[object, list[int]] = {}
        for k, image in enumerate(ranking.images):
            if image in value_of:
                groups.setdefault(value_of[image], []).append(k)
        figures = {v: group_figures(ranking, members) for v, members in groups.items()}
        winner, sure = None, math.nan
        if len(figures) >= 2:
            winner = max(figures, key=lambda v: figures[v]["score"])
            if len(ranking.samples):
                means = np.stack([ranking.samples[:, groups[v]].mean(axis=1) for v in figures])
                sure = float((np.argmax(means, axis=0) == list(figures).index(winner)).mean())
        out[axis] = {"values": figures, "winner": winner, "sure": sure}
    return out


def agreement(answers: list[Answer]) -> float | None:
    """Krippendorff's alpha (ordinal: first better < tie < second better) over the pairs that two or more raters
    answered, each rater's latest answer; None when no pair has two raters, NaN when every answer was the same."""
    import krippendorff

    latest: dict[tuple, dict[str, float]] = {}
    for a in answers:
        first, _ = a.pair
        said = {"left": 1.0, "right": -1.0}.get(a.answer, 0.0)
        latest.setdefault(a.pair, {})[a.rater] = said if a.left == first else -said
    units = [u for u in latest.values() if len(u) >= 2]
    if not units:
        return None
    raters = sorted({r for u in units for r in u})
    data = np.array([[u.get(r, np.nan) for u in units] for r in raters], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            value = krippendorff.alpha(reliability_data=data, value_domain=[-1.0, 0.0, 1.0],
                                       level_of_measurement="ordinal")
        except (ValueError, ZeroDivisionError):
            return math.nan
    return float(value)
