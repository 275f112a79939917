"""The names a suite file may give a dataset or a model, without the torch code behind them.

The schema (lipbench.suite) validates against these; lipbench.torch.data and lipbench.torch.models build
what they name. Keeping them here lets the schema, the CLI's parser and the pytest plugin load
without torch.
"""

from __future__ import annotations

#: Datasets lipbench.torch.data can load: the paper's image sets, plus two that need neither disk nor network.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits", "synthetic")

#: Networks lipbench.torch.models can build: the paper's MLP and its five-layer ConvNet.
MODELS: tuple[str, ...] = ("mlp", "convnet")

#: How the runner trains a claim's runs: each alone (per-run), as one vectorised ensemble, or
#: ensembles where two or more runs can share one (auto); see lipbench.torch.ensemble.
ENGINES: tuple[str, ...] = ("auto", "per-run", "ensemble")
#: auto: a claim's compatible runs as ensembles, the rest alone; measured faster than per-run on the quick suites
#: (README, "Performance") with the same verdicts.
DEFAULT_ENGINE = "auto"

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")  # built through torch.optim (lipbench.torch.optim)
SCHEDULES: tuple[str, ...] = ("constant", "step", "exponential", "cosine", "linear")  # torch.optim.lr_scheduler
EXECUTORS: tuple[str, ...] = ("local", "ray")  # lipbench.executors: a process pool, or Ray tasks
RAY_INSTALL = 'pip install "lipbench[ray]"  (or: pip install "ray[default]")'  # what the ray executor needs
