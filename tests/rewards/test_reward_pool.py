"""``MathVerifier``: the process pool grades like ``grade``, kills hung or crashed workers,
and keeps working afterwards; inline mode for the main thread."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import compute_rewards
from sfpo_lab.rewards.verify import Grade, GradeTimeout, grade

TIMEOUT_S = 2.0


def _sleep_forever(pred: str, gold: str) -> bool:
    """An injected checker that hangs (runs in a worker; picklable by reference)."""
    if pred == "hang":
        time.sleep(3600)
    return pred == gold


def _crash(pred: str, gold: str) -> bool:
    """An injected checker that kills its worker process outright."""
    if pred == "crash":
        os._exit(1)
    return pred == gold


def _raise(pred: str, gold: str) -> bool:
    raise RuntimeError("checker bug")


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    with MathVerifier(num_workers=2, timeout_s=TIMEOUT_S) as pool:
        yield pool


COMPLETIONS = [r"\boxed{\frac{1}{2}}", r"\boxed{0.3}", "no box", r"\boxed{27}", r"\boxed{27}"]
GOLDS = ["0.5", r"\frac{1}{3}", "1", "27.0", "28"]


def test_pool_matches_inline_grading(verifier: MathVerifier):
    expected = [grade(c, g) for c, g in zip(COMPLETIONS, GOLDS, strict=True)]
    assert verifier.grade_many(COMPLETIONS, GOLDS) == expected
    assert [g.correct for g in expected] == [True, False, False, True, False]


def test_inline_mode_matches_too():
    with MathVerifier(num_workers=0) as inline:
        assert inline.grade_many(COMPLETIONS, GOLDS) == [
            grade(c, g) for c, g in zip(COMPLETIONS, GOLDS, strict=True)
        ]


def test_inline_mode_refuses_threads():
    errors: list[BaseException] = []

    def work() -> None:
        try:
            MathVerifier(num_workers=0).grade_many([r"\boxed{1}"], ["1"])
        except RuntimeError as e:
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])


def test_empty_batch_and_length_mismatch(verifier: MathVerifier):
    assert verifier.grade_many([], []) == []
    with pytest.raises(ValueError, match="one gold per completion"):
        verifier.grade_many(["a"], [])


def test_workers_are_reused_across_calls(verifier: MathVerifier):
    verifier.grade_many([r"\boxed{1}"], ["1"])
    start = time.perf_counter()
    for _ in range(5):
        assert verifier.grade_many([r"\boxed{2}"] * 8, ["2"] * 8)[0].correct
    assert time.perf_counter() - start < 2.0


def test_a_real_slow_answer_is_killed_by_the_timeout(verifier: MathVerifier):
    """sympy evaluating 10^(10^10) runs ~10 s; the worker is killed at TIMEOUT_S."""
    start = time.perf_counter()
    grades = verifier.grade_many([r"\boxed{10^{10^{10}}}", r"\boxed{3}"], ["1", "3"])
    assert time.perf_counter() - start < TIMEOUT_S + 2.0
    assert grades == [
        Grade(correct=False, boxed=True, pred="10^{10^{10}}", timed_out=True),
        Grade(correct=True, boxed=True, pred="3"),
    ]
    assert verifier.grade_many([r"\boxed{4}"], ["4"])[0].correct


def test_an_injected_hang_is_killed_and_the_pool_lives_on():
    with MathVerifier(num_workers=1, timeout_s=1.0, match_fn=_sleep_forever) as pool:
        grades = pool.grade_many([r"\boxed{hang}", r"\boxed{ok}"], ["x", "ok"])
        # a timed-out boxed answer still earns the format reward, and is flagged
        assert grades == [Grade(False, True, "hang", timed_out=True), Grade(True, True, "ok")]
        assert pool.grade_many([r"\boxed{ok}"], ["ok"])[0].correct


def test_a_crashing_worker_is_replaced():
    with MathVerifier(num_workers=1, timeout_s=5.0, match_fn=_crash) as pool:
        grades = pool.grade_many([r"\boxed{crash}", r"\boxed{a}"], ["a", "a"])
        assert [g.correct for g in grades] == [False, True]
        assert pool.grade_many([r"\boxed{b}"], ["b"])[0].correct


def test_checker_errors_are_wrong_answers():
    with MathVerifier(num_workers=1, match_fn=_raise) as pool:
        assert pool.grade_many([r"\boxed{1}"], ["1"]) == [Grade(False, True, "1")]


def test_batch_timeout_bounds_a_whole_call():
    """Answers the batch timeout cut off are ungraded: wrong and flagged, never retried."""
    with MathVerifier(
        num_workers=1, timeout_s=30.0, batch_timeout_s=1.0, match_fn=_sleep_forever
    ) as pool:
        pool.grade_many([r"\boxed{ok}"], ["ok"])  # start the worker first
        grades = pool.grade_many([r"\boxed{hang}", r"\boxed{hang}"], ["x", "x"])
        assert grades == [Grade(False, True, "hang", timed_out=True)] * 2
        pool.batch_timeout_s = 120.0  # room for the killed worker's replacement on a busy host
        assert pool.grade_many([r"\boxed{ok}"], ["ok"])[0].correct


def test_invalid_settings_fail_fast():
    with pytest.raises(ValueError, match="num_workers"):
        MathVerifier(num_workers=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError, match="start_method"):
        MathVerifier(start_method="teleport")


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_start_methods_and_eager_start(method: str):
    with MathVerifier(num_workers=1, start_method=method) as pool:
        pool.start()
        assert pool.grade_many([r"\boxed{0.5}"], [r"\frac12"])[0].correct


def test_a_pickled_verifier_restarts_its_pool(verifier: MathVerifier):
    verifier.grade_many([r"\boxed{1}"], ["1"])
    with pickle.loads(pickle.dumps(verifier)) as copy:
        assert copy.grade_many([r"\boxed{1}"], ["1"])[0].correct


def test_close_is_idempotent_and_the_verifier_restarts():
    pool = MathVerifier(num_workers=1)
    assert pool.grade_many([r"\boxed{1}"], ["1"])[0].correct
    pool.close()
    pool.close()
    assert pool.grade_many([r"\boxed{1}"], ["1"])[0].correct
    pool.close()


def _descendants(pid: int) -> set[int]:
    """Live descendant pids of ``pid`` (Linux /proc), multiprocessing's resource tracker aside."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if "resource_tracker" in Path(f"/proc/{entry}/cmdline").read_text():
                    continue
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_a_preemption_signal_to_every_process_spares_the_workers():
    """SLURM signals every process of the job; the graders must survive to finish the
    iteration the trainer completes before checkpointing. (With the default forkserver the
    server ignores the signal before it forks any worker; ``spawn`` workers ignore it only
    once their initializer ran.)"""
    import signal

    with MathVerifier(num_workers=2, timeout_s=TIMEOUT_S, start_method="forkserver") as pool:
        pool.start()
        pids = _descendants(os.getpid())
        assert len(pids) >= 2
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        time.sleep(0.5)
        assert _descendants(os.getpid()) >= pids, "a worker died of SIGUSR1"
        assert pool.grade_many([r"\boxed{4}"], ["4"])[0].correct


def _hang_once(pred: str, gold: str) -> bool:
    """Hangs the first time it sees ``gold`` (a marker file path), answers at once after."""
    marker = Path(gold)
    if pred == "flaky" and not marker.exists():
        marker.touch()
        time.sleep(3600)
    if pred == "hang":
        time.sleep(3600)
    return pred in ("flaky", "ok")


def _times_out(pred: str, gold: str) -> bool:
    """math-verify gave up (its own alarm) on every pair."""
    raise GradeTimeout("math-verify timed out")


def test_a_shared_timed_out_answer_is_regraded_not_spread(tmp_path: Path):
    """Three samples share one answer whose first comparison stalls: the retry grades it, so
    none of the three is counted as timed out."""
    gold = str(tmp_path / "stalled-once")
    with MathVerifier(num_workers=1, timeout_s=1.0, match_fn=_hang_once) as pool:
        grades = pool.grade_many([r"\boxed{flaky}"] * 3 + [r"\boxed{ok}"], [gold] * 4)
    assert grades == [Grade(True, True, "flaky")] * 3 + [Grade(True, True, "ok")]
    assert compute_rewards(grades, "authors")[1]["grade_timeouts"] == 0.0


def test_timeouts_are_flagged_per_sample_and_paid_as_boxed_but_wrong(tmp_path: Path):
    """A lone stalled answer is not retried (one timeout, not two) and an answer that always
    hangs marks each of its samples; the others are untouched."""
    gold = str(tmp_path / "stalled-once")
    completions = [r"\boxed{flaky}", r"\boxed{hang}", r"\boxed{hang}", r"\boxed{ok}", "no box"]
    with MathVerifier(num_workers=1, timeout_s=1.0, match_fn=_hang_once) as pool:
        grades = pool.grade_many(completions, [gold] * 5)
    assert grades == [
        Grade(False, True, "flaky", timed_out=True),
        Grade(False, True, "hang", timed_out=True),
        Grade(False, True, "hang", timed_out=True),
        Grade(True, True, "ok"),
        Grade(False, False, None),
    ]
    rewards, metrics = compute_rewards(grades, "authors")
    assert rewards.tolist() == pytest.approx([0.1, 0.1, 0.1, 1.0, 0.0])
    assert metrics["grade_timeouts"] == 3.0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_math_verify_timeout_is_flagged_inline_and_in_workers(workers: int):
    with MathVerifier(num_workers=workers, match_fn=_times_out) as pool:
        assert pool.grade_many([r"\boxed{1}"], ["1"]) == [Grade(False, True, "1", timed_out=True)]


def test_math_verify_timeout_warnings_become_grade_timeouts():
    """math-verify returns False on its own timeouts and only logs a warning; the verifier
    counts that warning (on the loggers and with the text math-verify 0.9 uses)."""
    import logging

    import math_verify.grader
    import math_verify.parser

    from sfpo_lab.rewards import verify as verify_module

    assert (
        'logger.warning("Timeout during comparison")'
        in Path(math_verify.grader.__file__).read_text()
    )
    assert (
        'logger.warning(f"Timeout during parsing: {pred}")'
        in Path(math_verify.parser.__file__).read_text()
    )
    before = verify_module._TIMEOUTS.count
    logging.getLogger(math_verify.grader.__name__).warning("Timeout during comparison")
    logging.getLogger(math_verify.parser.__name__).warning("Timeout during parsing: x")
    logging.getLogger(math_verify.grader.__name__).warning("Error during comparison")
    assert verify_module._TIMEOUTS.count == before + 2
