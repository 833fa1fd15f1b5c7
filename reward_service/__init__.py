"""The reward service: scores (prompt, response) pairs in token-budgeted batches."""
