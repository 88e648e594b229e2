"""Test doubles of GPU-library behaviour (each with a test that it reproduces what it stands for)."""
