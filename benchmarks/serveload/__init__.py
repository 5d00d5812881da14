"""The parts of ``benchmarks/serve_load.py`` (the entry point and its options):

- ``payloads``: the model under test and the raw HTTP requests, built once;
- ``timing``: percentiles and back-to-back call timing;
- ``inprocess``: ``Predictor.predict`` in plain processes, the baseline, and the
  concurrency-1 rounds that alternate it with the server;
- ``stages``: the per-stage latency budget of one API request, in this process;
- ``load``: raw-socket clients at a concurrency level, server CPU and memory, the soak;
- ``server``: start ``imageclf serve`` on a free port, wait for it, stop it;
- ``report``: the JSON report, its goals, and the console tables.
"""
