"""Fakes and tiny stand-ins shared by tests and benchmarks."""
