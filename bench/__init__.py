"""Benchmarks (`make bench`): results in bench/results/*.json, summary in docs/benchmarks.md."""
