"""`python -m benchmarks`: run the suite."""

from benchmarks.cli import main

main()
