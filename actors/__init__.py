"""lipserve pipeline stages as plain Python classes and functions.

Nothing in this package imports Ray or Serve: every stage works in a plain process (the CLI uses it
that way) and is made into a Ray actor by ``serve_app``.
"""
