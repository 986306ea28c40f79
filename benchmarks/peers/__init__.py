"""Thin adapters that serve the scenario handlers (benchmarks/functions) from each peer server.

The scenario is chosen by the BENCH_HANDLER environment variable (`hello.handler`, ...). Each
adapter does the least a user porting a `handler(event, context)` function would: read the
body, build a minimal event, call the handler, map the returned dict to a response.
"""
