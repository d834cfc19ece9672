# E5 peak-memory decomposition: not implemented yet.
