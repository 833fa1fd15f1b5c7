"""A service on the project's own server (common.server) whose Score answers after a set delay:
`python -m tests.integration.slow_server PORT SECONDS`. Lets a test drain a call that outlasts 30 s."""
import asyncio
import sys

from common.server import Server, ServerOptions
from specrej.v1 import reward_pb2, reward_pb2_grpc


class SlowReward(reward_pb2_grpc.RewardServicer):
    def __init__(self, seconds: float):
        self.seconds = seconds

    async def Score(self, request, context):
        await asyncio.sleep(self.seconds)
        return reward_pb2.ScoreResponse(scores=[1.0])


async def main(port: int, seconds: float) -> None:
    server = Server("reward", [reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name],
                    ServerOptions(host="127.0.0.1", port=port, metrics_port=0, drain_grace_seconds=120))
    reward_pb2_grpc.add_RewardServicer_to_server(SlowReward(seconds), server.grpc)
    await server.start()
    await server.mark_serving()
    await server.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
