"""The results directory: run records, the store of run folders and locks, atomic writes."""
