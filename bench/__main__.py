"""`python -m bench`: the side-by-side benchmark suite (bench/suite.py says what it measures)."""

from bench.suite import main

if __name__ == "__main__":
    main()
