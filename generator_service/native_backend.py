"""The backend contract over this project's own engine (engine.py): its sessions answer
concurrent futures from the decode loop's thread; here they are awaited."""
import asyncio

from .backend import AdvanceResult, ModelInfo, Pruned, Started
from .engine import GeneratorEngine
from .request_plan import SessionRequest
from .session import Session


class NativeSession:
    def __init__(self, session: Session):
        self.session = session

    async def start(self) -> Started:
        return await asyncio.wrap_future(self.session.start())

    async def advance(self, until_tokens: int, keep: list[int] = (), fork_from: list[int] = ()) -> AdvanceResult:
        return await asyncio.wrap_future(self.session.advance(until_tokens, keep, fork_from))

    async def prune(self, keep: list[int]) -> Pruned:
        return await asyncio.wrap_future(self.session.prune(keep))

    def close(self) -> None:
        self.session.close()


class NativeBackend:
    def __init__(self, engine: GeneratorEngine):
        self.engine = engine
        self.info = ModelInfo(
            model=engine.model_name, device=str(engine.device), dtype=str(engine.dtype).removeprefix("torch."),
            kv_cache_budget_bytes=engine.budget_bytes, kv_cache_bytes_per_token=engine.bytes_per_token,
            max_context_tokens=engine.decoder.max_context, max_batch_size=engine.max_batch_size,
            tokenizer=engine.tokenizer_fingerprint)

    def prepare(self, messages: list[dict], **options) -> SessionRequest:
        return self.engine.prepare(messages, **options)

    def admit(self, request: SessionRequest) -> NativeSession:
        return NativeSession(self.engine.admit(request))

    def active_sessions(self) -> int:
        return self.engine.admission.active

    def running_sequences(self) -> int:
        return self.engine.running_sequences()

    def kv_cache_bytes(self) -> int:
        return self.engine.kv_cache_bytes()

    def healthy(self) -> bool:
        return self.engine.loop.thread.is_alive()

    def shutdown(self) -> None:
        self.engine.shutdown()
