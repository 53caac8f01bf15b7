"""What the report prints: tables, plots, confidence intervals, published numbers, CSV safety."""
