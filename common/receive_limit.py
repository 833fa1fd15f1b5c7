"""How large a request a service parses: gRPC refuses a larger one with RESOURCE_EXHAUSTED before
reading it into memory, so an oversized prompt costs the server nothing beyond its bytes in flight."""
import dataclasses

from .server import ServerOptions

# Beyond a request's text limit, what its other fields (roles, schedules, indices, framing) may take.
RECEIVE_HEADROOM_BYTES = 1024 * 1024


def receive_limited(options: ServerOptions, max_text_bytes: int) -> ServerOptions:
    """`options` refusing, before parsing, any request larger than `max_text_bytes` of text needs."""
    return dataclasses.replace(options, max_receive_bytes=max_text_bytes + RECEIVE_HEADROOM_BYTES)
