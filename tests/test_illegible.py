"""Prompts whose meaning the embedding model cannot see are never answered by another prompt:
emoji, unbroken keys and hashes, scripts the model was not trained on, and words changed in a
language it reads only in pieces."""

from __future__ import annotations

import random
import string

import pytest

from semcache import SemanticCache
from semcache.policy import Reason
from tests.conftest import CountingEmbedder


def _letters(seed: int, n: int = 120) -> str:
    return "".join(random.Random(seed).choices(string.ascii_letters, k=n))


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("😀😀😀😀😀", "🚀🔥🎉💀👻"),
        ("🍕🍕", "🍣🍣"),
        (f"Is this token valid: sk{_letters(1)}", f"Is this token valid: sk{_letters(2)}"),
        (
            "Why does commit 3f9a1c0b7e2d4a6f8b0c1d2e3f4a5b6c7d8e9f00 break the build?",
            "Why does commit 9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d break the build?",
        ),
        (
            f"decode this base64 please {_letters(3, 90)}==",
            f"decode this base64 please {_letters(4, 90)}==",
        ),
        ("I love 🍕 more than anything", "I love 🍣 more than anything"),
        ("ภาษาไทยเป็นภาษาที่ยาก", "ภาษาไทยเป็นภาษาที่ง่าย"),
        # Scripts the model spells out letter by letter ("what is the capital of France" /
        # "... of Germany": cosine 0.95, and the verifier gave it 0.667).
        ("ما هي عاصمة فرنسا؟", "ما هي عاصمة ألمانيا؟"),
        ("Как выучить английский язык?", "Как выучить немецкий язык?"),
        ("Πώς μπορώ να μάθω γαλλικά;", "Πώς μπορώ να μάθω γερμανικά;"),
    ],
)
def test_what_the_model_cannot_read_is_never_served_to_another_prompt(
    cache: SemanticCache, stored: str, asked: str
) -> None:
    cache.put("Which planet is closest to the sun?", "Mercury")  # the scope is not empty
    cache.put(stored, "the answer to the stored prompt")
    decision = cache.lookup_many([_request(asked)])[0]
    assert decision.hit is None
    assert decision.reason in (Reason.PROMPT_ILLEGIBLE, Reason.OPAQUE_MISMATCH)
    # The same prompt is still answered, by the exact tier.
    hit = cache.get(stored)
    assert hit is not None and hit.reason is Reason.EXACT


def test_words_the_model_spells_out_are_opaque_and_others_are_not(
    embedder: CountingEmbedder,
) -> None:
    arabic, russian, latin = embedder.read(
        [
            "ما هي عاصمة فرنسا؟",
            "Как выучить немецкий язык?",
            "¿Cuál es la forma más eficaz de ahorrar dinero? Wie setze ich es zurück?",
        ]
    )
    assert "فرنسا" in arabic.opaque and "немецкий" in russian.opaque
    assert latin.opaque == ()  # "eficaz" is e ##fi ##ca ##z: pieces, not letters


def test_an_illegible_prompt_is_stored_without_a_vector(cache: SemanticCache) -> None:
    cache.put("Which planet is closest to the sun?", "Mercury")
    entry_id = cache.put("😀😀😀😀😀", "smile")
    entry = cache.entry(entry_id)
    assert entry is not None and entry.vector is None
    assert cache.lookup_many([_request("🚀🔥🎉💀👻")])[0].reason is Reason.PROMPT_ILLEGIBLE


def test_the_same_opaque_text_in_a_paraphrase_can_still_hit(cache: SemanticCache) -> None:
    cache.put("What is the capital city of France? 🇫🇷", "Paris")
    hit = cache.lookup_many([_request("What's the capital of France? 🇫🇷", min_confidence=0.0)])[0]
    assert hit.hit is not None and hit.reason is Reason.SEMANTIC


# Wrong hits the semantic tier served before (cosine 0.91-0.98, verifier 0.69-0.85): the
# English model reads these languages as pieces of words, and the guards know English only.
@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("Je voudrais augmenter ma limite de retrait", "Je voudrais réduire ma limite de retrait"),
        ("Ich möchte meine Bestellung stornieren", "Ich möchte meine Bestellung nicht stornieren"),
        ("Eu quero cancelar meu pedido", "Eu não quero cancelar meu pedido"),
        ("Ik wil mijn bestelling annuleren", "Ik wil mijn bestelling niet annuleren"),
        (
            "Puis-je prendre ce médicament avant le repas ?",
            "Puis-je prendre ce médicament après le repas ?",
        ),
        (
            "¿Puedo tomar este medicamento antes de comer?",
            "¿Puedo tomar este medicamento después de comer?",
        ),
        # Read character by character; the verifier alone refused these (0.31, 0.16).
        ("法国的首都是哪里？", "德国的首都是哪里？"),
        ("日本の首都はどこですか？", "中国の首都はどこですか？"),
    ],
)
def test_a_word_changed_in_a_language_the_model_reads_in_pieces_is_another_question(
    cache: SemanticCache, stored: str, asked: str
) -> None:
    cache.put(stored, "the answer to the stored prompt")
    decision = cache.lookup_many([_request(asked)])[0]
    assert decision.hit is None
    assert decision.reason is Reason.UNREAD_MISMATCH
    assert decision.score is not None and decision.score > 0.84  # the model barely tells them apart


def test_the_same_words_in_a_language_the_model_reads_in_pieces_still_hit(
    cache: SemanticCache,
) -> None:
    cache.put("Comment ouvrir un compte bancaire à l'étranger ?", "answer")
    # Accents dropped and a word in another form (an ending, not a stem, changed).
    for asked in (
        "comment ouvrir un compte bancaire a l'etranger",
        "Comment ouvrir un compte bancaire à l'étrangère ?",
    ):
        decision = cache.lookup_many([_request(asked, min_confidence=0.0)])[0]
        assert decision.reason is Reason.SEMANTIC, (asked, decision)


def test_english_with_a_few_rare_words_is_judged_as_before(cache: SemanticCache) -> None:
    cache.put("How do I reset my router's firmware?", "answer")
    decision = cache.lookup_many([_request("How can I reset the firmware of my router?")])[0]
    assert decision.reason is Reason.SEMANTIC


def test_a_reading_holds_the_words_the_model_reads_in_pieces(embedder: CountingEmbedder) -> None:
    (french,) = embedder.read(["Je voudrais RÉDUIRE ma limite de retrait, 42 fois"])
    assert {"voudrais", "reduire", "retrait"} <= french.pieced
    assert "je" not in french.pieced and "de" not in french.pieced  # whole pieces
    assert not any(word.isdigit() for word in french.pieced)
    (chinese,) = embedder.read(["法国的首都是哪里"])  # no spaces: one run, read per character
    assert chinese.pieced == {"法国的首都是哪里"}


def _request(prompt: str, **options: float):  # type: ignore[no-untyped-def]
    from semcache.keys import CacheRequest

    return CacheRequest(prompt=prompt, **options)
