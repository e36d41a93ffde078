"""nanochat-runner: run Karpathy's nanochat speedrun on any GPUs with one command.

The laptop side (`runner plan`, `runner up`, ...) builds a plan and hands it to a backend; the node side
(`runner node run`) executes that plan against one fsspec storage URL. Heavy libraries (boto3, docker, modal,
torch) are imported only inside the functions that use them so that `runner --help` stays instant.
"""

__version__ = "0.1.0"
