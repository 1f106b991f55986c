"""Recorded market data: readers, converters and the event-array format."""
