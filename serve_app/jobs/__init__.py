"""Durable job state: typed records, the store protocol and its backends, storage layout, dispatch.

Nothing here imports HTTP or Serve: the API layer and the pipeline replicas both build on it.
"""
