"""``python -m sfpo_lab.checkpointing convert|export|check|consolidate ...`` (see cli)."""

import sys

from sfpo_lab.checkpointing.cli import main

main(sys.argv[1:])
