"""The HTTP layer: the FastAPI app, one routes module per API surface, the schema contract, the
error envelope, and ``JobIntake`` (how every API turns a request into a queued job).

It depends on the job state (``serve_app/jobs``), the media checks (``actors/media``), the typed
config and the error taxonomy, never on the Ray side of the service: the ingress deployment
(``serve_app/ingress.py``) hands it what it needs as ``ApiServices``.
"""
