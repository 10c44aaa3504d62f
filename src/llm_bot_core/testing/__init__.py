"""Test doubles for the external edges, speaking the real wire protocols on 127.0.0.1.

Used by the test suite and the benchmarks; shipped in the package so both run from one install.
"""
