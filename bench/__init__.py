"""mailnet's benchmark and crash-test harness: a broker in a child process and load generators.

`python -m broker.bench` runs the benchmark (see docs/performance.md).
"""
