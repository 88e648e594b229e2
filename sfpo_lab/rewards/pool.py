"""Grading many completions in a process pool with a hard per-answer timeout.

No model output may hang or crash training. math-verify's own signal alarms cannot interrupt
long C-level work (e.g. sympy evaluating ``10^{10^{10}}`` runs to its 10 s alarm at best), so
each answer is compared in a pebble worker process under a hard timeout: a worker that
overruns or dies is killed and replaced, that answer is graded wrong, and the pool lives on.

Answers are extracted in the calling process (cheap, linear) so only short strings cross the
process boundary; identical ``(pred, gold)`` pairs are compared once per call (a group of G
samples often repeats the same answer).

Timeouts are counted, not hidden: a pair whose comparison timed out (the per-answer limit,
math-verify's own alarm) or whose worker died marks its sample ``timed_out``. When several
samples share that pair, it is compared once more after the rest (all such pairs together),
so a transient stall (an overloaded machine, a killed worker) is not passed on to every
sample of the group: only a shared pair that fails twice (or that the batch timeout cut off)
marks all its samples. A pair of one sample is not retried (nothing to spread; a hostile
answer costs one timeout, not two). Each such sample is graded wrong, as the authors' code grades a
math-verify timeout (0.1 if boxed), and counted in ``grade_timeouts``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import signal
import threading
from collections import Counter
from collections.abc import Callable, Sequence

from pebble import ProcessExpired, ProcessPool

from sfpo_lab.rewards.parsing import AnswerParsing, extract_answer, get_answer_parsing
from sfpo_lab.rewards.verify import Grade, GradeTimeout, answers_match

MatchFn = Callable[[str, str], bool]
"""``(pred, gold) -> correct``; must be picklable (a module-level function or a partial of
one). Raising :class:`GradeTimeout` marks the pair timed out; other errors mean wrong."""

Verdict = bool | None
"""A pair's outcome: equal, not equal, or None = never finished (timeout, dead worker)."""

_UNFINISHED = (concurrent.futures.TimeoutError, ProcessExpired, GradeTimeout)


STARTUP_TIMEOUT_S = 120.0
"""How long a fresh pool may take to answer its health check (imports sympy in each worker)."""


def ignore_preemption_signals() -> None:
    """In reward workers: ignore SIGUSR1 and SIGINT.

    SLURM sends its preemption / time-limit signal (SIGUSR1 with ``--signal``) to every process
    of the job, and Ctrl-C reaches the whole process group; the trainer answers by finishing
    the iteration, which still needs its graders, then checkpoints. SIGTERM keeps its default
    action: pebble stops timed-out workers with it.
    """
    for sig in (signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _warm_up() -> None:
    """Worker initializer: ignore preemption signals, import and exercise math-verify once so
    the first task is fast."""
    ignore_preemption_signals()
    answers_match("1", "1")


def _health_check() -> bool:
    """Runs in a fresh worker: math-verify imports and grades a trivial pair correctly."""
    return answers_match("2", "2") and not answers_match("2", "3")


class MathVerifier:
    """Grades completions against gold answers with math-verify, never hanging or crashing.

    Args:
        num_workers: worker processes; 0 grades inline in the calling (main) thread with only
            math-verify's own alarms as a bound (for debugging and tiny runs).
        timeout_s: hard limit per answer comparison in a worker; a timeout is a wrong answer.
        batch_timeout_s: optional limit for a whole :meth:`grade_many` call; answers not graded
            by then are wrong (their workers are killed). None = no limit.
        start_method: multiprocessing start method for workers. ``"forkserver"`` (default) is
            safe in a multi-threaded trainer with CUDA, and math-verify is preloaded once in the
            fork server; but like ``"spawn"`` each new worker re-imports the main script, so keep
            heavy imports out of its top level (``train.py`` does: ~0.2 s per worker; a script
            importing torch + transformers at the top costs ~3 s per worker and replacement).
            ``"fork"`` starts workers in ~0.1 s but forks the (multi-threaded) trainer.
        parsing: answer extraction and comparison, a preset name of
            :data:`~sfpo_lab.rewards.parsing.ANSWER_PARSINGS` (default the authors') or an
            :class:`~sfpo_lab.rewards.parsing.AnswerParsing`.
        match_fn: the comparison run in workers (a hook for tests and other checkers);
            default :func:`~sfpo_lab.rewards.verify.answers_match` under ``parsing``.

    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        batch_timeout_s: float | None = None,
        start_method: str = "forkserver",
        parsing: str | AnswerParsing = "authors",
        match_fn: MatchFn | None = None,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method={start_method!r} is not available here; "
                f"choose one of {multiprocessing.get_all_start_methods()}"
            )
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.start_method = start_method
        self.parsing = get_answer_parsing(parsing)
        self.match_fn = match_fn or functools.partial(answers_match, parsing=self.parsing)
        self._pool: ProcessPool | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _ensure_pool(self) -> ProcessPool:
        """The live pool, (re)created if it was never started or has died."""
        if self._pool is None or not self._pool.active:
            if self._pool is not None:
                self._pool.stop()
            context = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":
                # Workers (and replacements of killed ones) fork from a server that imported
                # math-verify once. Each worker still re-runs the main script's top-level code
                # (Python 3.11 ignores "__main__" here; later versions honour it).
                preload = [
                    "__main__",
                    "sfpo_lab.rewards.verify",
                    "sfpo_lab.rewards._forkserver_init",
                ]
                context.set_forkserver_preload(preload)
            self._pool = ProcessPool(
                max_workers=self.num_workers, initializer=_warm_up, context=context
            )
            _check_health(self._pool)
        return self._pool

    def start(self) -> None:
        """Start the workers now (else the first :meth:`grade_many` does); checks they work."""
        if self.num_workers > 0:
            self._ensure_pool()

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None

    def __getstate__(self) -> dict:
        """Pickling (e.g. a module sent to spawned ranks) drops the live pool; it restarts."""
        return {**self.__dict__, "_pool": None}

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing to report to
            self.close()

    # -- grading -----------------------------------------------------------------------------

    def grade_many(self, completions: Sequence[str], golds: Sequence[str]) -> list[Grade]:
        """Grade ``completions[i]`` against ``golds[i]`` for every i.

        Returns:
            One :class:`Grade` per completion, in order. Checker errors give
            ``correct=False``; timeouts and dead workers give ``correct=False,
            timed_out=True`` (``boxed`` still reflects the completion).
        """
        if len(completions) != len(golds):
            raise ValueError(
                f"grade_many needs one gold per completion: got {len(completions)} completions "
                f"and {len(golds)} golds"
            )
        preds = [extract_answer(c, self.parsing) for c in completions]
        counts = Counter((p, g) for p, g in zip(preds, golds, strict=True) if p is not None)
        pairs = sorted(counts)
        if self.num_workers == 0:
            verdicts = self._verdicts_inline(pairs)
        else:
            verdicts = self._verdicts(pairs, shared={pair for pair, n in counts.items() if n > 1})
        return [
            Grade(correct=False, boxed=False, pred=None)
            if p is None
            else Grade(
                correct=verdicts[(p, g)] is True,
                boxed=True,
                pred=p,
                timed_out=verdicts[(p, g)] is None,
            )
            for p, g in zip(preds, golds, strict=True)
        ]

    def _verdicts_inline(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
        """Compare in this thread; math-verify's alarms need the main thread."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "MathVerifier(num_workers=0) grades with signal alarms and must be called from "
                "the main thread; use num_workers >= 1 elsewhere"
            )
        return {pair: _safe_match(self.match_fn, *pair) for pair in pairs}

    def _verdicts(
        self, pairs: list[tuple[str, str]], shared: set[tuple[str, str]]
    ) -> dict[tuple[str, str], Verdict]:
        """Compare in worker processes under the per-answer (and optional batch) timeout;
        ``shared`` pairs (several samples) that did not finish get one more round."""
        verdicts, cut_off = self._verdict_round(pairs, self.batch_timeout_s)
        retry = [p for p, v in verdicts.items() if v is None and p in shared and p not in cut_off]
        if retry:
            verdicts.update(self._verdict_round(retry, self.batch_timeout_s)[0])
        return verdicts

    def _verdict_round(
        self, pairs: list[tuple[str, str]], batch_timeout_s: float | None
    ) -> tuple[dict[tuple[str, str], Verdict], set[tuple[str, str]]]:
        """One scheduling round: the verdicts, and the pairs the batch timeout cut off."""
        pool = self._ensure_pool()
        futures = {
            pool.schedule(self.match_fn, args=pair, timeout=self.timeout_s): pair for pair in pairs
        }
        done, not_done = concurrent.futures.wait(futures, timeout=batch_timeout_s)
        for future in not_done:
            future.cancel()  # pebble kills the worker running it; the pool replaces it
        verdicts = {pair: _future_verdict(f) if f in done else None for f, pair in futures.items()}
        return verdicts, {futures[f] for f in not_done}


def _check_health(pool: ProcessPool) -> None:
    """Fail loudly when workers cannot grade at all (else every answer would silently be wrong).

    Typical cause: a main script without an ``if __name__ == "__main__":`` guard, which the
    ``spawn``/``forkserver`` start methods re-import in each worker.
    """
    future = pool.schedule(_health_check, timeout=STARTUP_TIMEOUT_S)
    try:
        healthy = future.result()
    except Exception as error:  # report whatever killed the worker
        pool.stop()
        raise RuntimeError(f"MathVerifier workers failed to start: {error!r}") from error
    if not healthy:
        pool.stop()
        raise RuntimeError("MathVerifier workers started but math-verify graded '2' == '2' wrong")


def _safe_match(match_fn: MatchFn, pred: str, gold: str) -> Verdict:
    """``match_fn`` with a math-verify timeout as None and any other exception as "wrong"."""
    try:
        return bool(match_fn(pred, gold))
    except GradeTimeout:
        return None
    except Exception:  # any checker failure means "not verified"
        return False


def _future_verdict(future: concurrent.futures.Future) -> Verdict:
    """The verdict of a finished task: None for a timeout or a dead worker, False for a
    checker error."""
    try:
        return bool(future.result(timeout=0))
    except _UNFINISHED:
        return None
    except Exception:  # checker errors: not verified
        return False
