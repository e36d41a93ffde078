"""Stand-in for nanochat's `tasks` package (latest pin): only what the runner's pre-seed code calls."""
