"""Building blocks for the method trainers (filled in by the method issues)."""
