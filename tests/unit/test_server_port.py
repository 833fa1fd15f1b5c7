"""A replica started on a port another server holds fails at start, instead of silently taking half
of that server's new connections."""
import asyncio

import pytest

from common.server import Server, ServerOptions
from specrej.v1 import reward_pb2

REWARD = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name


def test_a_server_on_a_taken_port_fails_to_start():
    async def scenario():
        first = Server("reward", [REWARD], ServerOptions(host="127.0.0.1", port=0, metrics_port=0))
        await first.start()
        try:
            with pytest.raises(RuntimeError, match=f"127.0.0.1:{first.port}"):
                Server("reward", [REWARD], ServerOptions(host="127.0.0.1", port=first.port, metrics_port=0))
        finally:
            await first.grpc.stop(0)
        # Once the first has stopped, the port is free for a replacement.
        second = Server("reward", [REWARD], ServerOptions(host="127.0.0.1", port=first.port, metrics_port=0))
        assert second.port == first.port
        await second.grpc.start()
        await second.grpc.stop(0)

    asyncio.run(scenario())
