"""lipbench: the claims of Luo et al. (arXiv:2506.18588) on the Lipschitz dynamics of SGD, as tests."""

__version__ = "0.1.0"
