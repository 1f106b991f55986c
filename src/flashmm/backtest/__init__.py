"""Replaying recorded markets through the same code that trades."""
