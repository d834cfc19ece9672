"""Long-context quality data: RULER generators, LongBench/InfiniteBench/PG19 loaders, materialization."""
