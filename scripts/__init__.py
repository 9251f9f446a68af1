"""The repository's scripts. Those that import the program, the mock engine or the tests' support code run as
modules from the repository's root (`python -m scripts.<name>`; the Makefile adds tests/ to PYTHONPATH for
the ones that reuse tests/support); the others run as files too."""
