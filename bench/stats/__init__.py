"""Statistics of the studies, plain Python and numpy. Imports no study."""
