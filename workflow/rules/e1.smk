# E1 prompt-length latency sweep: not implemented yet.
