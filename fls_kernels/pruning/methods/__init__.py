"""One module per pruning method: its :class:`~fls_kernels.pruning.method.Method` and its pruner class.

Shared parts: :mod:`.fisher` (likelihood, damping rule and statistics of the methods that measure the Fisher)
and :mod:`.kron_obs` (OBS scores and updates from a Kronecker-factored inverse Fisher, for FLS and K-FAC-OBS).
The registry of all methods is :mod:`fls_kernels.pruning.registry`.
"""
