"""Long-context quality data: which datasets E4 runs (specs), RULER generators, LongBench/InfiniteBench/PG19 loaders, materialization."""
