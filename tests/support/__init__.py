"""The tests' support code: what several test files share (the mock engine itself is mock_engine/, at the root).

Imported as `support.<module>` (pyproject.toml puts tests/ on pytest's pythonpath); no test file imports another.
"""
