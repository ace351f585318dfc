"""The ``lipserve`` command: render in-process, export ONNX, run the service, run the demo."""

from serve_app.cli.main import main

__all__ = ["main"]
