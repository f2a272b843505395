"""Planner presets applied through nnU-Net's Python API."""
