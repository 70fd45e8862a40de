"""corral's ttrpc: the framing and envelope as pure code, and an anyio client and server on unix sockets.

ttrpc is how containerd talks to its runtime shims (and they back to it, for events).
"""

from corral.api.edge import NAMESPACE_HEADER, NAMESPACE_TTRPC_HEADER
from corral.api.ttrpc.client import TTRPCClient, error_for_status
from corral.api.ttrpc.envelope import Request, Response, Status
from corral.api.ttrpc.framing import MAX_PAYLOAD, Flags, Frame, FrameDecoder, FrameTooLarge, MessageType
from corral.api.ttrpc.server import Handler, PeerCredentials, TTRPCContext, TTRPCServer

__all__ = [
    "MAX_PAYLOAD",
    "NAMESPACE_HEADER",
    "NAMESPACE_TTRPC_HEADER",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "Handler",
    "MessageType",
    "PeerCredentials",
    "Request",
    "Response",
    "Status",
    "TTRPCClient",
    "TTRPCContext",
    "TTRPCServer",
    "error_for_status",
]
