"""Protocols, scoring and the benchmark runner."""

from stfusion.benchmark.config import BenchmarkConfig, ConfigError, load_config
from stfusion.benchmark.runner import run_benchmark

__all__ = ["BenchmarkConfig", "ConfigError", "load_config", "run_benchmark"]
