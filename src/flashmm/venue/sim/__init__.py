"""The local venue simulator."""
