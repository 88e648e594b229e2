"""Hydra finds launchers only under the ``hydra_plugins`` namespace: this is sfpo_lab's.

The logic lives in :mod:`sfpo_lab.run.launcher`; select it with ``hydra/launcher=torchrun``
(the default of ``conf/train.yaml``).
"""

from sfpo_lab.run.launcher import TorchrunLauncherBase


class TorchrunLauncher(TorchrunLauncherBase):
    """Each multirun job as its own process group (see :mod:`sfpo_lab.run.launcher`)."""
