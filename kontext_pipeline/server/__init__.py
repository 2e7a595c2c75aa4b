"""The bundled BFL-compatible server: for offline use (``kontext-pipeline serve``, the preview
provider) and for tests of clients, faults included."""

from kontext_pipeline.server._app import create_app
from kontext_pipeline.server._state import FaultConfig, ServerConfig, ServerState

__all__ = ["FaultConfig", "ServerConfig", "ServerState", "create_app"]
