"""diffperf: differentiable performance model of LLM inference serving."""

__version__ = "0.1.0"
