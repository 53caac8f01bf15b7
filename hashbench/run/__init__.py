"""Running a grid: planning, executing cells, their progress, experiment files, status and re-evaluation."""
