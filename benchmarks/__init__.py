"""Side-by-side benchmarks of corrald and Debian's containerd, both driven by the real ``ctr``.

Run with ``./dev bench`` (or ``python -m benchmarks --help``). Not part of the test suite: it
measures and reports, it never asserts on timings. Adding a scenario is one decorated function in
``benchmarks.scenarios``.
"""
