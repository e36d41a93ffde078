"""TEST DOUBLE of nanochat's scripts/ folder (a regular package here so that `python -m scripts.X`
run from the double's root always finds these stand-ins first, never another `scripts` package)."""
