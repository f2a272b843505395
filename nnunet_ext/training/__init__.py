"""Shared trainer machinery: auxiliary state in checkpoints, phases, seeding, short variants."""
