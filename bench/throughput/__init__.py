"""The throughput study: engines and scorers on their own, each script writing bench/results/NAME.json.

A benchmark of other generator engines goes here, as its own module beside `decoding`."""
