"""Quality studies: accuracy against sparsity for FLS and the baselines under one protocol."""
