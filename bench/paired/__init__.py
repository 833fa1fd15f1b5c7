"""The paired study: Speculative Rejection against Best-of-n0 from the same initial candidates."""
