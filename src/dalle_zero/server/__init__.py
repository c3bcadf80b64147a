"""HTTP API and web page for a text-to-image model folder (``dalle serve``); imports pipelines only."""

from dalle_zero.server.api import GenerationService
from dalle_zero.server.app import DalleServer, make_server
from dalle_zero.server.generate_request import ApiError, ServerLimits

__all__ = ["ApiError", "DalleServer", "GenerationService", "ServerLimits", "make_server"]
