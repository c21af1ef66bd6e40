"""What several sidecars share through Redis (``--redis``), and the local stand-ins each one
keeps when Redis is away: :mod:`.link` (the connection, short timeouts, a pause after a
failure), :mod:`.counters` (integer counters and once-only marks: the budgets' ledger)."""
