"""Speed benchmarks: ``python -m benchmarks`` (or ``make bench``).

Prints a table and writes ``benchmarks/results/latest.json``: a list of objects with ``name``,
``value``, ``unit`` and, where a peer exists, ``peer``, ``peer_value`` and ``ratio`` (ours over
peer for rates, peer over ours for times, so ratio > 1 always means we are faster); every peer is
measured in the same run on the same machine. Targets (for this 2-core machine) are reported next
to each number, never asserted: the machine is shared and noisy.
"""
