"""What runs inside a worker process: reads call frames, runs the user's handler, answers.

It runs in the user's process, so it imports little (the standard library and msgpack) and
leaves as little behind as it can for the user's code to see.
"""
