# E2 concurrency / arrival-rate sweep with SLO goodput: not implemented yet.
