"""Converters from public data set layouts to nnU-Net raw format (one module per data set)."""
