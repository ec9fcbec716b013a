"""Benchmark harness: episodes over seeds and shots, result records, statistics and leaderboards."""
