"""``burrow bench``: throughput against an echo baseline, memory per message, long-poll wake latency.

Layout: :mod:`.procs` starts and measures the processes under test, :mod:`.workloads` defines the
requests (Python scripts and wrk Lua), :mod:`.client` is the Python load generator (run as a
subprocess), :mod:`.loadgen` drives it or wrk, :mod:`.measure` holds the memory and long-poll
measurements, and :mod:`.runner` is the command line.
"""
