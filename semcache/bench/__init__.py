"""``semcache bench``: hit rate, precision of hits and savings on labelled or logged traffic.

Two modes, chosen from the rows of the input (or ``--mode``):

- **pairs** (``{"a", "b", "duplicate"}`` rows): store every distinct ``a``, look up every ``b``,
  sweep the knob that decides hits: ``min_confidence`` with a verifier, ``min_similarity``
  without one (:mod:`semcache.bench.pairs`);
- **stream** (clusters, prompts, conversations, or a log of OpenAI request bodies): replay a
  seeded shuffle through the real sidecar over HTTP, against a simulated upstream, from an
  empty cache (:mod:`semcache.bench.stream`).

Both print a table, and write ``results.json`` and PNG plots to ``--out``.
"""
