# E6 YaRN long-context stress: not implemented yet.
