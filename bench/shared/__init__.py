"""What every study uses: records, sizes and presets, prompts, requests, engine ports, a journal, result
files. Imports no study."""
