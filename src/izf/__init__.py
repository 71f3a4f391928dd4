"""Invertible Zero-Shot Flows."""
