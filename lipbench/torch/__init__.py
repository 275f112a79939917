"""The torch side of lipbench: everything here imports torch, nothing outside it does at import.

Datasets as device tensors (`data`), the networks and their initialisation (`models`), each
layer's sigma_max (`lipschitz`), the SDE probe (`sde`), regularisers (`regularisers`), the
optimisers and schedules built through torch.optim (`optim`), the pieces both training loops
share (`training`), the per-run reference loop (`engine`), the vectorised ensemble (`ensemble`),
and the run context and recorder a user's own loop gets (`run_context`, `recorder`).

The rest of lipbench (the suite schema, assertions, baselines, the runner, the CLI and the pytest
plugin) imports these modules only inside the functions that train.
"""
