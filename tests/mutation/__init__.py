"""Mutation check of the training core (issue 16.1): ``python -m tests.mutation``."""
