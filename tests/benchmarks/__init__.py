"""Quick runs of the benchmarks, so they cannot rot (figures printed, never asserted)."""
