"""Grouping sequences into batches under a token budget, with little padding."""


def batches_by_token_budget(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so each batch's rows x longest row stays within `token_budget`.

    Sorting by length keeps similar lengths together, so padding stays small; a sequence longer
    than the budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > token_budget:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
