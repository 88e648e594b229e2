"""The machinery around a run: start, guard, resume, log, plot.

runner (fit/test), preflight (checks before anything heavy), launcher (multi-process
jobs), preemption + rundir (requeue, lock, records), loggers / progress / quiet
(output), perf (memory per stage), curves + plot (``python -m sfpo_lab.run.plot``)."""
