"""Refill for Speculative Rejection: after a decision point, the rows its rejections freed get
branches of the best running survivors, so that the batch stays as wide as it began. Plain Python."""


def branch_parents(survivors: list[int], initial_n: int) -> list[int]:
    """The parent of each branch that brings the running `survivors` (indices, best first) back up to
    `initial_n` running candidates: the survivors in turn, best first, round robin. Finished
    candidates are never parents, so with no running survivor there is no branch."""
    if not survivors:
        return []
    return [survivors[i % len(survivors)] for i in range(max(0, initial_n - len(survivors)))]
