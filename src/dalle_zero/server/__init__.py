"""HTTP API and web page for a text-to-image model folder (``dalle serve``); imports pipelines only."""

from dalle_zero.server.api import ApiError, GenerationService, ServerLimits
from dalle_zero.server.app import DalleServer, make_server

__all__ = ["ApiError", "DalleServer", "GenerationService", "ServerLimits", "make_server"]
