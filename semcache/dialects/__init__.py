"""The API shapes the sidecar speaks, one object each (see :mod:`semcache.dialects.base`).

======================  ==========================  ==========
path                    dialect                     upstreams
======================  ==========================  ==========
/v1/chat/completions    :class:`ChatCompletions`    OpenAI's
/v1/completions         :class:`Completions`        OpenAI's
/v1/responses           :class:`Responses`          OpenAI's
/v1/messages            :class:`Messages`           Anthropic's
======================  ==========================  ==========
"""

from semcache.dialects.base import Assembler, Dialect, Event, Keying, Parsed
from semcache.dialects.completions import ChatCompletions, Completions
from semcache.dialects.messages import Messages
from semcache.dialects.responses import Responses

CHAT = ChatCompletions()
COMPLETIONS = Completions()
RESPONSES = Responses()
MESSAGES = Messages()
DIALECTS: tuple[Dialect, ...] = (CHAT, COMPLETIONS, RESPONSES, MESSAGES)

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "DIALECTS",
    "MESSAGES",
    "RESPONSES",
    "Assembler",
    "ChatCompletions",
    "Completions",
    "Dialect",
    "Event",
    "Keying",
    "Messages",
    "Parsed",
    "Responses",
]
