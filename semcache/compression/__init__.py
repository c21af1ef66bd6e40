"""Context compression: long chat histories sent to the upstream in fewer tokens, without
losing what the last turn needs and without breaking the provider's prompt cache.

Library use, no sidecar::

    from semcache.compression import Compressor, Mode

    compressor = Compressor(embedder)          # the embedder the cache already loads, or None
    result = compressor.compress(messages, Mode.EXTRACTIVE)
    result.messages, result.original_tokens, result.sent_tokens

See :mod:`.compressor` for the modes and :mod:`.history` for what is always sent verbatim.
"""

from semcache.compression.compressor import Compressed, CompressionSettings, Compressor, Mode
from semcache.compression.summaries import Summaries, Summarise

__all__ = ["Compressed", "CompressionSettings", "Compressor", "Mode", "Summaries", "Summarise"]
