"""The MCP side: the app and its tools, request preparation, input images, jobs on the GPU queue, HTTP.

Never imports torch or ``zimage_mcp.engine``. ``build_server`` is the entry point (``app.py``).
"""

from zimage_mcp.server.app import RequestIdFilter, ZImageServer, build_server
from zimage_mcp.server.app_state import AppState
from zimage_mcp.server.tools import ImageTools, request_id_var

__all__ = ["AppState", "ImageTools", "RequestIdFilter", "ZImageServer", "build_server", "request_id_var"]
