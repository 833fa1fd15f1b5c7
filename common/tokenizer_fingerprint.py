"""A short name for what a tokenizer's ids mean, so that two services can tell whether token ids from
one are the same tokens to the other, and pass ids instead of text between them."""
import hashlib
import json


def tokenizer_fingerprint(tokenizer) -> str:
    """Hex digest of the tokenizer's vocabulary (every token's string and id, added tokens included):
    equal fingerprints mean every id names the same token."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda entry: entry[1])
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode()).hexdigest()[:32]
