"""Drop-in sparse modules and ``sparsify``: no trainer, no workflow knowledge."""
