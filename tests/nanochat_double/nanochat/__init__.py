"""TEST DOUBLE of the nanochat package: only the modules a runner invokes with `python -m`
(nanochat.dataset, nanochat.report) exist here. See ../README.md."""
