"""The HTTP API package (FastAPI app, routes, the web studio)."""
