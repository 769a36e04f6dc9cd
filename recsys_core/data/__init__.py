"""Data layer: raw sources, preprocessing (filters, k-core, leave-one-out split), prepared-dataset storage."""
