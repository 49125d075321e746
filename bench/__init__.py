"""mailnet's benchmark and crash-test harness: a broker in a child process and load generators.

Not part of the installed package: run it from a source checkout, `python -m bench` (or
`mailnet bench` from an editable install); see docs/performance.md.
"""
