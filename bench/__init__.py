"""Benchmarks of Speculative Rejection against Best-of-N, and of the services: `python -m bench` (see README.md).

One subpackage per study, over a shared part that imports no study:
- `shared`: what every study uses: `records` (the runs and pools a study measures), `config` (sizes and
  presets), `prompts`, `requests` (a run's request and schedule, a pool of complete samples), `ports`
  (the engines in process or over gRPC, behind the coordinator Pipeline's ports), `journal` (units of
  work kept as they end), `figures` (where results are written), `formatting`.
- `stats`: plain Python and numpy, tested alone: `order_stats` (Best-of-N expectations from a pool of
  samples), `equivalence` (the Best-of-N size and cost that match a Speculative Rejection run),
  `bootstrap`, `binomial`, `rank_correlation`.
- `efficiency`: pools and Speculative Rejection runs, placed on the Best-of-N curve.
- `paired`: Speculative Rejection against Best-of-n0 from the same candidates (`experiment`,
  `summary`, `partial_agreement`, `report`).
- `throughput`: engines and scorers on their own: `decoding` (the engine against Hugging Face
  generate(), and the gRPC overhead), and the scripts `scoring_throughput`, `reward_sessions`,
  `concurrent_sessions`, `compiled_step`; a benchmark of generator engines belongs here too.
- `load`: the three services as processes: `traffic` (closed-loop clients, a flood, health checks),
  `load_run` (`--parts load`), `fleet` (`--parts fleet`), `score_ahead`.
The run of `python -m bench` sits on top: `driver` (one run, start to end), `run_results`, `report`
(results.json and results.md) and `plots` (PNG figures, matplotlib only there).
"""
