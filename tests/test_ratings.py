"""The ratings ledger and the ranking made from it, in process: a known ordering is recovered from answers, ties count
as ties, a cell whose identity changed is unrated, two processes appending at once lose nothing, and a torn last
line from a killed writer is skipped with a warning instead of stopping the report."""

import json
import logging
import multiprocessing
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from inpaint_sweep import ratings
from inpaint_sweep.errors import ConfigError

IMAGES = [(f"case-{k:012x}", 0) for k in range(10)]


def prefer_higher(rng, n_answers: int, rater: str = "ann", images=IMAGES) -> list[ratings.Answer]:
    """Answers of a rater who always prefers the image with the higher index, on random pairs shown either way."""
    out = []
    for _ in range(n_answers):
        a, b = rng.choice(len(images), 2, replace=False)
        out.append(ratings.new_answer(rater, "case", images[a], images[b], "left" if a > b else "right"))
    return out


def test_a_known_ordering_is_recovered_with_intervals_that_separate_the_ends():
    answers = prefer_higher(np.random.default_rng(0), 60)
    r = ratings.rank(answers, set(IMAGES))
    at = r.index()
    strengths = [r.strength[at[i]] for i in IMAGES]
    assert spearmanr(strengths, range(len(IMAGES)))[0] >= 0.9
    assert r.used == 60 and r.ignored == 0 and r.raters == 1 and r.answers.sum() == 120
    worst, best = at[IMAGES[0]], at[IMAGES[-1]]
    assert r.low[worst] <= r.strength[worst] <= r.high[worst]
    assert r.high[worst] < r.low[best]  # the best and the worst image are told apart with confidence


def test_ties_count_as_ties_and_both_bad_as_a_tie():
    a, b, c = IMAGES[:3]
    tied = [ratings.new_answer("ann", "case", a, b, "tie"), ratings.new_answer("ann", "case", b, a, "both_bad")] * 5
    r = ratings.rank(tied, {a, b})
    assert abs(r.strength[0] - r.strength[1]) < 1e-6 and r.answers.tolist() == [10, 10]
    # One win and one tie for a over c: a is ahead of c, by less than with two wins.
    win = ratings.new_answer("ann", "case", a, c, "left")
    one = ratings.rank([win, ratings.new_answer("ann", "case", c, a, "tie")], {a, c})
    two = ratings.rank([win, ratings.new_answer("ann", "case", c, a, "right")], {a, c})
    gap = lambda r: r.strength[r.index()[a]] - r.strength[r.index()[c]]  # noqa: E731
    assert 0 < gap(one) < gap(two)


def test_a_cell_whose_identity_changed_is_unrated_and_the_others_keep_their_answers():
    answers = prefer_higher(np.random.default_rng(1), 30)
    changed = ("case-ffffffffffff", 0)  # IMAGES[3] with new settings: a new cell id
    view = (set(IMAGES) - {IMAGES[3]}) | {changed}
    r = ratings.rank(answers, view)
    assert changed not in r.index() and IMAGES[3] not in r.index()
    involved = sum(IMAGES[3] in (x.left, x.right) for x in answers)
    assert involved > 0 and r.ignored == involved and r.used == 30 - involved
    # The same answers in another grid (a view with the rated cells and new ones) keep their rankings.
    again = ratings.rank(answers, set(IMAGES) | {changed})
    assert again.used == 30 and again.index().keys() == set(IMAGES)


def test_bad_answers_are_refused_with_a_sentence():
    with pytest.raises(ConfigError, match="'maybe' is not one of left, right, tie, both_bad"):
        ratings.new_answer("ann", "case", IMAGES[0], IMAGES[1], "maybe")
    with pytest.raises(ConfigError, match="rater name '' must be 1 to 80 characters"):
        ratings.new_answer("  ", "case", IMAGES[0], IMAGES[1], "left")
    with pytest.raises(ConfigError, match="two different images"):
        ratings.new_answer("ann", "case", IMAGES[0], IMAGES[0], "left")


def _append_many(folder: str, rater: str, n: int) -> None:
    for k in range(n):
        ratings.append(folder, ratings.new_answer(rater, "case", IMAGES[k % 10], IMAGES[(k + 1) % 10], "tie"))


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), rater, 150)) for rater in ("ann", "bob")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    answers, offset = ratings.read_answers(tmp_path)
    assert len(answers) == 300 and {a.rater for a in answers} == {"ann", "bob"}
    assert offset == ratings.ledger_path(tmp_path).stat().st_size
    lines = ratings.ledger_path(tmp_path).read_text().splitlines()
    assert len(lines) == 300 and all(json.loads(line)["answer"] == "tie" for line in lines)


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_answer_is_kept(tmp_path, caplog):
    first = ratings.new_answer("ann", "case", IMAGES[0], IMAGES[1], "left")
    ratings.append(tmp_path, first)
    with open(ratings.ledger_path(tmp_path), "a") as f:  # a writer killed in the middle of its line
        f.write('{"answer": "right", "case": "ca')
    with caplog.at_level(logging.WARNING, logger="inpaint_sweep.ratings"):
        answers, offset = ratings.read_answers(tmp_path)
    assert answers == [first] and "last line is cut off" in caplog.text
    ratings.append(tmp_path, ratings.new_answer("bob", "case", IMAGES[2], IMAGES[3], "right"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inpaint_sweep.ratings"):
        answers, _ = ratings.read_answers(tmp_path)
        later, _ = ratings.read_answers(tmp_path, offset)  # the app reads on from where it stopped
    assert [a.rater for a in answers] == ["ann", "bob"] and [a.rater for a in later] == ["bob"]
    assert "skipped a line that is not a whole answer" in caplog.text


def test_per_axis_figures_name_the_winner_and_how_sure():
    answers = prefer_higher(np.random.default_rng(2), 80)
    r = ratings.rank(answers, set(IMAGES))
    guidance = {image: (12.0 if k >= 5 else 5.0) for k, image in enumerate(IMAGES)}  # the higher half: 12
    fig = ratings.axis_figures(r, {"guidance": guidance})["guidance"]
    assert fig["winner"] == 12.0 and fig["sure"] > 0.95
    high, low = fig["values"][12.0], fig["values"][5.0]
    assert high["images"] == low["images"] == 5 and high["low"] > low["high"]
    assert high["answers"] + low["answers"] == 160


def test_agreement_between_raters():
    rng = np.random.default_rng(3)
    ann = prefer_higher(rng, 25, "ann", images=[IMAGES[k] for k in rng.permutation(len(IMAGES))])
    same = [ratings.Answer("bob", a.time, a.case, a.right, a.left, {"left": "right", "right": "left"}[a.answer])
            for a in ann]  # bob saw the same pairs the other way round and agreed
    opposite = [ratings.Answer("cy", a.time, a.case, a.left, a.right, {"left": "right", "right": "left"}[a.answer])
                for a in ann]
    assert ratings.agreement(ann + same) == pytest.approx(1.0)
    assert ratings.agreement(ann + opposite) < 0
    assert ratings.agreement(ann) is None  # one rater: nothing to agree on
    ties = [ratings.Answer(r, "t", "case", IMAGES[0], IMAGES[1], "tie") for r in ("ann", "bob")]
    assert math.isnan(ratings.agreement(ties))  # every answer the same: alpha is undefined
