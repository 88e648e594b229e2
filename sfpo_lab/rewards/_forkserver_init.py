"""Preloaded by the reward pool's forkserver only (never import it elsewhere): the server and
every worker forked from it ignore the preemption signal, see
:func:`sfpo_lab.rewards.pool.ignore_preemption_signals`."""

from sfpo_lab.rewards.pool import ignore_preemption_signals

ignore_preemption_signals()
