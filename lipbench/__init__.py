"""lipbench: the claims of Luo et al. (arXiv:2506.18588) on the Lipschitz dynamics of SGD, as tests."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`lipbench.run` and `lipbench.load` (lipbench.api), imported on first use: `import lipbench` stays cheap."""
    if name in ("run", "load"):
        from lipbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'lipbench' has no attribute {name!r}")
