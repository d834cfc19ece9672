# E4 long-context quality: not implemented yet.
