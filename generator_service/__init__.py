"""The generator service: a causal LM that decodes n candidates of one prompt as one batch."""
