"""The efficiency study: a pool per prompt for the Best-of-N curve, and Speculative Rejection runs placed on it."""
