"""The host-wide device lock and the contention record (``lockfile``)."""
