"""Plain vLLM as a Best-of-N user calls it: n requests of one prompt straight to an AsyncLLM."""
import asyncio


async def sample(engine, prompt_ids: list[int], n: int, tokens: int, tag: str, *, temperature: float = 1.0,
                 ignore_eos: bool = False, seed: int | None = None) -> list[list[int]]:
    """Each request's token ids. With `seed`, request i is seeded from (seed, i); without, unseeded
    (vLLM 0.32's CPU build fails on seeded requests whose prefill its default chunking splits)."""
    from vllm import SamplingParams

    async def one(index: int) -> list[int]:
        params = SamplingParams(temperature=temperature, max_tokens=tokens, ignore_eos=ignore_eos, detokenize=False,
                                seed=None if seed is None else seed * 1000 + index)
        final = None
        async for output in engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=f"{tag}-{index}"):
            final = output
        return list(final.outputs[0].token_ids)

    return await asyncio.gather(*(one(i) for i in range(n)))
