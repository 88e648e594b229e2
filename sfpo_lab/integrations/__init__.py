"""SFPO on other RL trainers: ``sfpo_lab.integrations.trl`` (TRL's ``GRPOTrainer``, extra
``trl``). The verl contract is written down in docs/integrations.md."""
