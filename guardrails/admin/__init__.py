"""Admin commands behind the `guardrails` command line: failures (dlq) and the audit trail.

Each module reads and writes through the same clients the function uses, so what an admin sees
is exactly what the worker recorded.
"""
