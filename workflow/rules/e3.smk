# E3 aggregated vs prefill/decode-disaggregated serving: not implemented yet.
