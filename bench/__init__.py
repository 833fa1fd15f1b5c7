"""Benchmark of Speculative Rejection against Best-of-N: `python -m bench` (see bench/README.md).

The analysis modules are plain Python and numpy (no gRPC, no torch) so they can be tested alone:
`records` (the inputs a driver produces), `order_stats` (Best-of-N expectations from a pool of
samples), `equivalence` (the Best-of-N size and cost that match a Speculative Rejection run),
`report` (results.json and results.md) and `plots` (PNG figures, matplotlib only there).
The driver: `config` (sizes and presets), `prompts`, `ports` (the engines in process or over gRPC,
behind the coordinator Pipeline's ports), `efficiency` (pools and runs), `throughput` (engine
against Hugging Face generate(), and the gRPC overhead), `driver` (one run, start to end).
"""
