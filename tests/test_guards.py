"""The lexical guards: they must refuse swaps and changed details, and let true paraphrases
through (the misfires found on pairs_gptcache_mock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcache import CacheRequest, SemanticCache
from semcache.policy import Reason, guard_mismatch, roles_exchanged

PARAPHRASES = [
    # A phrase moved with its function words, neighbours trading places, and two things
    # joined by "or" trading places keep the question (QQP duplicates).
    ("How are waves formed?", "How waves are formed?"),
    ("What is the best diet for building muscle?", "What is the best diet for muscle building?"),
    ("Who made dowry system, girls or the boys?", "Who made dowry system, boys or the girls?"),
    # "one" as a pronoun and "first" as "to begin with" are not counts.
    (
        "One can check the hash of any Python object using the Hasher module.",
        "The Hasher module can be used to generate the hash of any Python object.",
    ),
    (
        "You can create a dataset by first creating a folder of images.",
        "Create a folder of images, then create a dataset from it.",
    ),
    (
        "The method works in two steps: 1) it first downloads the files, and 2) then builds it.",
        "The method is a two-step process: it first downloads the files, then builds it.",
    ),
    # "one" after a determiner, where no noun follows it, stands for a noun (from the mock
    # rephrasings and QQP duplicates).
    (
        "Use rename_column() with the name of the original column and the new column name.",
        "Rename the original column to a new one using rename_column().",
    ),
    (
        "Which one is better: your rational intellect or the irrational one?",
        "Which is better, your rational intellect or your irrational one?",
    ),
    # A number in digits, in words or both is one value; "thousands" counts nothing exactly.
    ("The Hub holds more than one hundred languages.", "The Hub holds over 100 languages."),
    ("Revenue rose 5% to $3 billion.", "Revenue rose five percent to $3bn."),
    (
        "It makes datasets of several thousand audio files.",
        "It makes datasets of thousands of files.",
    ),
    ("twenty-five people attended the talk", "25 people attended the talk"),
    # The answer word "No," is not a second negation; "without" twice is still "without".
    ("No, LOAD_HU doesn't exist in v2.10.0.", "LOAD_HU is not a feature of v2.10.0."),
    (
        "Run it without a GPU and without internet access.",
        "Run it without a GPU or internet access.",
    ),
    # "Without" negates as "not" does; "don't forget" says "remember".
    (
        "Use it, so you don't have to wait for the whole dataset to download.",
        "Use it without having to wait for the entire download.",
    ),
    (
        "The builder is a no-code solution for creating an audio dataset.",
        "The builder creates an audio dataset without any coding.",
    ),
    (
        "If the dataset doesn't have any metadata, a label column is made from the folder.",
        "A label column is made from the folder in the absence of any metadata.",
    ),
    ("Don't forget to pass your credentials.", "Remember to pass your credentials."),
    # One block moved keeps the meaning; so does the passive, irregular participles included.
    ("In Python, how do I sort a list?", "How do I sort a list in Python?"),
    ("Google bought YouTube.", "YouTube was bought by Google."),
    ("What are the pros and cons of remote work?", "What are the cons and pros of remote work?"),
    # One in words, alone, is what an article says.
    ("Use one column per struct field.", "Use a single column for each struct field."),
    ("The first step is to make a list of URLs.", "The initial step is to make a list of URLs."),
    # Active and passive name the same things in the other order.
    (
        "A PyArrow Table serves as the foundation for a Dataset object.",
        "A Dataset object is backed by a PyArrow Table.",
    ),
    # A name written together or apart, an acronym spelt out.
    (
        "Huggingface.js is a collection of JS libraries with TS types included.",
        "Hugging Face.js is a set of JavaScript libraries, complete with TypeScript types.",
    ),
    (
        "Tasks provides demos and models for ML tasks.",
        "Tasks furnishes demos and models for Machine Learning projects.",
    ),
    # Words that move with their neighbours, a question's inversion, active and passive, and
    # things joined by "and" or compared both ways round do not trade roles.
    (
        "What is the tallest mountain in the world?",
        "Which mountain is the tallest in the world?",
    ),
    ("In Python, how do I reverse a list?", "How do I reverse a list in Python?"),
    ("How important is money in your life?", "Why money is important in our life?"),
    ("the committee appointed the new manager", "the new manager was appointed by the committee"),
    (
        "What is the difference between a list and a tuple?",
        "What is the difference between a tuple and a list?",
    ),
    (
        "How is the brain different from the mind?",
        "What is the mind and how is it different from the brain?",
    ),
    ("What is the difference between real gas and ideal gas?", "real gas vs ideal gas?"),
    # "... or not?" asks for both answers and negates nothing.
    ("How do I know if a guy likes me or not?", "How do I know if a guy likes me?"),
    ("Is it safe to eat raw eggs? Why or why not?", "Is it safe to eat raw eggs?"),
    # The two sides of a symmetric relation trade places, names or not.
    ("How is a cat different from a dog?", "How is a dog different from a cat?"),
    ("Is Java similar to C#?", "Is C# similar to Java?"),
    ("Python vs Java: which is faster?", "Java vs Python: which is faster?"),
    (
        "What is the difference between information systems and information technology?",
        "What's the difference between Information Technology and Information Systems?",
    ),
    # News: titles and company forms come and go around a name; "New York-based" names York.
    ("Gov. Schwarzenegger signed the bill.", "Governor Schwarzenegger signed the bill."),
    ("Shares of Microsoft Corp. rose 3 percent.", "Microsoft shares rose 3%."),
    ("A New York firm reported a loss.", "A New York-based firm reported a loss."),
    # Names that move with the clause or phrase they stand in keep their neighbours.
    (
        "You can create your FileSystem instance for Google Cloud Storage by importing gcsfs"
        ' and running "fs = gcsfs.GCSFileSystem(**storage_options)".',
        'By importing gcsfs and executing "fs = gcsfs.GCSFileSystem(**storage_options)", you'
        " can generate a FileSystem instance for Google Cloud Storage.",
    ),
    (
        "After meeting Blair in London, Bush said the talks went well.",
        "Bush said the talks went well after meeting Blair in London.",
    ),
    ("In Paris, Smith met Jones.", "Smith met Jones in Paris."),
    # A word negated by its prefix or its meaning is the word with "not"; one said beside its
    # negated form negates nothing; a word written together is no prefix.
    ("It is not possible to undo this.", "It is impossible to undo this."),
    ("The file is unavailable.", "The file is not available."),
    ("Setting the flag is optional.", "Setting the flag is not required."),
    (
        "What are the advantages and disadvantages of remote work?",
        "What are the advantages of remote work?",
    ),
    ("He stood in front of the house.", "He stood infront of the house."),
    ("A third of the students passed.", "One third of the students passed."),
    # Numbers that move with the word they are said of.
    (
        "The company's shares closed at $45.20, down 30 cents.",
        "Shares of the company closed down 30 cents at $45.20.",
    ),
    ("Read page 5 of chapter 3.", "Read chapter 3, page 5."),
    ("Profit rose 12% to $3 billion.", "Profit rose to $3 billion, up 12%."),
    # Money with its magnitude attached after a currency sign; a month or a day written short.
    ("The firm paid $18.5m for the unit.", "The firm paid $18.5 million for the unit."),
    ("Revenue was $1.2B.", "Revenue was $1.2 billion."),
    ("The vote is on Oct. 5.", "The vote is on October 5."),
    # What someone said, quoted in one and reported in the other (news).
    (
        '"We are very pleased with the results," the chief executive said.',
        "The chief executive said they were very pleased with the results.",
    ),
    # An acronym written with dots is the acronym ("U.N." / "UN" / "United Nations"), and a
    # phrase of place or time both texts hold moves freely (news).
    (
        "The U.N. Security Council voted to impose sanctions.",
        "The United Nations Security Council voted to impose sanctions.",
    ),
    (
        "The U.S. economy added 200,000 jobs in March.",
        "The United States economy added 200,000 jobs in March.",
    ),
    (
        "The FBI is investigating the attack, officials said.",
        "Officials said the F.B.I. is investigating the attack.",
    ),
    (
        "Apple unveiled its new iPhone on Wednesday in San Francisco.",
        "On Wednesday in San Francisco, Apple introduced its new iPhone.",
    ),
    (
        "About 300 people attended the funeral in Boston on Saturday.",
        "Some 300 people attended Saturday's funeral in Boston.",
    ),
    # When and where, said in either order (word-swap pairs).
    (
        "Katz was born in Sweden in 1947 and moved to New York at the age of one.",
        "Katz was born in 1947 in Sweden and moved to New York at the age of one.",
    ),
    # Active and passive with the roles kept; a question word fronts the object; another verb
    # may say the same the other way round.
    (
        "Police arrested the suspect on Monday night.",
        "The suspect was arrested by police on Monday night.",
    ),
    ("Which company did Google buy?", "Which company was bought by Google?"),
    (
        "Why did Hillary Clinton lose to Donald Trump?",
        "Why was Hillary Clinton defeated by Donald Trump?",
    ),
    ("Can data loading be configured?", "Data loading can be configured by passing arguments."),
    # A time on the hour with or without its minutes; "1st" is "first".
    ("The store opens at 9 AM.", "The store opens at 9:00 am."),
    ("He finished 1st in the race.", "He finished first in the race."),
    ("Bake it at 180°C for an hour.", "Bake it at 180 degrees Celsius for an hour."),
    # A name in the plural is the name (a support question).
    ("What are the opening hours on Sunday?", "When are you open on Sundays?"),
    # The one day both texts name moves freely too.
    (
        "The 52-year-old actor died Sunday at his home in Los Angeles.",
        "The actor, 52, died at his Los Angeles home on Sunday.",
    ),
    # A quoted name the other text names without quotes.
    (
        "The `to_batches` method in the Table class converts a Table to `RecordBatch` objects.",
        "The `Table` class has a `to_batches` method which turns it into RecordBatch objects.",
    ),
    # "Different from" is "not the same as".
    (
        "Specifying a version that is different from your local version might cause issues.",
        "Using a version that is not the same as your local version could cause problems.",
    ),
    # Opposites both texts hold, or one holds both of: nothing is turned round.
    ("What were the highs and lows of the market?", "What were the market's highs and lows?"),
    # Converses say the same with the roles turned round.
    ("The right amount of cash was not sent to me.", "I have not received the amount of cash."),
    ("Will I be charged if someone sends me money?", "Do I pay a fee to receive money?"),
    ("Did Brazil lose to Germany?", "Did Germany win against Brazil?"),
    ("Should I eat before or after a workout?", "Is it better to eat after a workout?"),
    ("What led to the rise and fall of Rome?", "Why did Rome rise and then fall?"),
    ("How many hours a day should I sleep?", "How many hours of sleep a night do I need?"),
]

SWAPS = [
    # ... but "one" before the noun it counts is a count.
    (
        "Is the one person who knows here?",
        "Are the two people who know here?",
        Reason.NUMBER_MISMATCH,
    ),
    ("I need a new one-page form.", "I need a new two-page form.", Reason.NUMBER_MISMATCH),
    ("Do I have one dog?", "Do I have two dogs?", Reason.NUMBER_MISMATCH),
    ("Should I buy one or two?", "Should I buy two?", Reason.NUMBER_MISMATCH),
    ("What is 2+1?", "What is 2+2?", Reason.NUMBER_MISMATCH),
    ("Is 1 a prime number?", "Is a prime number?", Reason.NUMBER_MISMATCH),
    # The same words, two of them trading places across others (no block move gives it).
    (
        "Are the wwe fights scripted and fake?",
        "Are the fake fights scripted and wwe?",
        Reason.ORDER_MISMATCH,
    ),
    (
        "What happens when diesel is used in a petrol engine?",
        "What happens when petrol is used in a diesel engine?",
        Reason.ORDER_MISMATCH,
    ),
    ("Why did Google buy YouTube?", "Why did YouTube buy Google?", Reason.ENTITY_MISMATCH),
    (
        "Is the Boston-based firm hiring?",
        "Is the Denver-based firm hiring?",
        Reason.ENTITY_MISMATCH,
    ),
    (
        "What do you think about India's surgical strikes on Pakistan?",
        "What do you think about Pakistan's surgical strikes on India?",
        Reason.ENTITY_MISMATCH,
    ),
    # Title Case turns the name guard off for presence, never for order.
    (
        "The Manager Of Arsenal Was Appointed To Chelsea",
        "The Manager Of Chelsea Was Appointed To Arsenal",
        Reason.ENTITY_MISMATCH,
    ),
    ("Is 7 a prime number?", "Is 9 a prime number?", Reason.NUMBER_MISMATCH),
    ("The store opens at 9:00.", "The store opens at 9:30.", Reason.NUMBER_MISMATCH),
    ("Bake it at 180°C.", "Bake it at 180°F.", Reason.ENTITY_MISMATCH),
    ("He finished 1st in the race.", "He finished 2nd in the race.", Reason.NUMBER_MISMATCH),
    ("Why is my Note 4 overheating?", "Why is my Note 14 overheating?", Reason.NUMBER_MISMATCH),
    ("Revenue rose to $3 billion.", "Revenue rose to $3 million.", Reason.NUMBER_MISMATCH),
    ("two hundred people came", "three hundred people came", Reason.NUMBER_MISMATCH),
    (
        "How do I make coffee with sugar?",
        "How do I make coffee without sugar?",
        Reason.NEGATION_MISMATCH,
    ),
    ("Should I use tabs?", "Should I not use tabs?", Reason.NEGATION_MISMATCH),
    ("Why not use Python?", "Why use Python?", Reason.NEGATION_MISMATCH),
    ("Is non-dairy milk healthy?", "Is dairy milk healthy?", Reason.NEGATION_MISMATCH),
    ("Is it bad to forget?", "Is it bad not to forget?", Reason.NEGATION_MISMATCH),
    (
        "Can I train it with a GPU and with internet access?",
        "Can I train it without a GPU and without internet access?",
        Reason.NEGATION_MISMATCH,
    ),
    ("Convert celsius to kelvin", "Convert kelvin to celsius", Reason.ORDER_MISMATCH),
    # Who does what to whom, with no role word the order guard knows and no names.
    ("why do dogs hate cats", "why do cats hate dogs", Reason.ORDER_MISMATCH),
    ("German brewery of regional style", "regional brewery of German style", Reason.ORDER_MISMATCH),
    (
        "a film directed by nolan and produced by thomas",
        "a film directed by thomas and produced by nolan",
        Reason.ORDER_MISMATCH,
    ),
    (
        "the manager of arsenal was appointed to chelsea",
        "the manager of chelsea was appointed to arsenal",
        Reason.ORDER_MISMATCH,
    ),
    (
        "Can a state court overrule a decision by the federal court?",
        "Can a federal court overrule a decision by the state court?",
        Reason.ORDER_MISMATCH,
    ),
    (
        "flights from new york to los angeles",
        "flights from los angeles to new york",
        Reason.ORDER_MISMATCH,
    ),
    # Two content words trading slots in an unchanged frame of function words (QQP's
    # generated swaps and labelled non-duplicates).
    ("Can depression be cured?", "Can cured be depression?", Reason.ORDER_MISMATCH),
    ("Do girls like introvert guys?", "Do guys like introvert girls?", Reason.ORDER_MISMATCH),
    ("How waves are formed?", "How formed are waves?", Reason.ORDER_MISMATCH),
    # A symmetric relation lets the two things it joins trade places, not anything else in the
    # sentence: the relation word moving, or things exchanged across more than the relation.
    (
        "What is the difference between CNY and CNH currencies?",
        "What is the currencies between CNY and CNH difference?",
        Reason.ORDER_MISMATCH,
    ),
    (
        "What is the difference between infatuation and love?",
        "What is the love between infatuation and difference?",
        Reason.ORDER_MISMATCH,
    ),
    (
        "Do employees at Zillow have a good work-life balance? Does it differ across teams?",
        "Do teams at Zillow have a good work-life balance? Does it differ across employees?",
        Reason.ORDER_MISMATCH,
    ),
    # Names that take each other's places, even beside a neighbour both had, or in one of
    # several mentions, or within a name, are swapped.
    (
        "What is the climate of California's coastal regions, and how does it compare to the"
        " climate in Ohio?",
        "What is the climate of Ohio's coastal regions, and how does it compare to the climate"
        " in California?",
        Reason.ENTITY_MISMATCH,
    ),
    (
        "How will Microsoft's acquisition of LinkedIn help LinkedIn's users? Is it a good bet"
        " by Microsoft?",
        "How will LinkedIn's acquisition of Microsoft help LinkedIn's users? Is it a good bet"
        " by Microsoft?",
        Reason.ENTITY_MISMATCH,
    ),
    (
        "How do I prepare for JEE Advanced after school?",
        "How do I prepare for Advanced JEE after school?",
        Reason.ENTITY_MISMATCH,
    ),
    ("In Paris, Smith met Jones.", "Jones met Smith in Paris.", Reason.ORDER_MISMATCH),
    # ... a phrase of place both hold does not hide the others' swap, nor does a name after
    # "in" in one text only.
    ("Did Obama meet Putin in Moscow?", "Did Putin meet Obama in Moscow?", Reason.ENTITY_MISMATCH),
    ("Is Paris in France?", "Is France in Paris?", Reason.ENTITY_MISMATCH),
    (
        "The Yankees beat the Red Sox at Fenway on Sunday.",
        "On Sunday at Fenway, the Red Sox beat the Yankees.",
        Reason.ENTITY_MISMATCH,
    ),
    # ... but two places are no time and a place.
    (
        "Smith was born in London and died in Paris.",
        "Smith was born in Paris and died in London.",
        Reason.ORDER_MISMATCH,
    ),
    ("Was he born in London in Ohio?", "Was he born in Ohio in London?", Reason.ORDER_MISMATCH),
    (
        "Is the store open from Monday to Friday?",
        "Is it open from Friday to Monday?",
        Reason.ENTITY_MISMATCH,
    ),
    # Active and passive with the roles the other way round.
    ("Google bought YouTube.", "Google was bought by YouTube.", Reason.ORDER_MISMATCH),
    ("The dog bit the man.", "The dog was bitten by the man.", Reason.ORDER_MISMATCH),
    # A common word in capitals is an acronym, in text not written in capitals.
    ("The U.S. sanctioned the U.K.", "The U.K. sanctioned the U.S.", Reason.ENTITY_MISMATCH),
    ("Is the WHO reliable?", "Is the UN reliable?", Reason.ENTITY_MISMATCH),
    # A word against its negation by prefix or meaning.
    (
        "Is it possible to travel back in time?",
        "Is it impossible to travel back in time?",
        Reason.NEGATION_MISMATCH,
    ),
    (
        "How do I lock my laptop keyboard?",
        "How do I unlock my laptop keyboard?",
        Reason.NEGATION_MISMATCH,
    ),
    ("Is the flag required?", "Is the flag optional?", Reason.NEGATION_MISMATCH),
    (
        "Why is it illegal to drive barefoot?",
        "Why is it legal to drive barefoot?",
        Reason.NEGATION_MISMATCH,
    ),
    # "A third of" is a share, not three.
    ("A third of the students passed.", "Three of the students passed.", Reason.NUMBER_MISMATCH),
    # Numbers in another order that keep no word of their own, or take each other's.
    ("What is 10 divided by 2?", "What is 2 divided by 10?", Reason.NUMBER_MISMATCH),
    ("I have 2 adults and 3 children.", "I have 3 adults and 2 children.", Reason.NUMBER_MISMATCH),
    ("Buy 2 get 1 free.", "Buy 1 get 2 free.", Reason.NUMBER_MISMATCH),
    ("The score was 3 to 1.", "The score was 1 to 3.", Reason.NUMBER_MISMATCH),
    # A letter after a number is a magnitude only after a currency sign; a month is a month.
    ("Is a 5m wall too high?", "Is a 5 million wall too high?", Reason.NUMBER_MISMATCH),
    ("The firm paid $18.5m.", "The firm paid $18.5 billion.", Reason.NUMBER_MISMATCH),
    ("The vote is on Oct. 5.", "The vote is on November 5.", Reason.ENTITY_MISMATCH),
    # Quoted words must stand in the other text unless they are a sentence it reports in its
    # own words, in the same order: a short quote, a command or a reordered saying is not.
    (
        'Explain the saying "the dog bit the man".',
        "Explain the saying the man bit the dog.",
        Reason.QUOTE_MISMATCH,
    ),
    ('What does "break a leg" mean?', "What does break an arm mean?", Reason.QUOTE_MISMATCH),
    (
        'Why does "git commit -m fix" fail?',
        "Why does git commit fail?",
        Reason.QUOTE_MISMATCH,
    ),
    # A number set off by a hyphen is a number: model versions, product names.
    ("What is new in GPT-4?", "What is new in GPT-3?", Reason.NUMBER_MISMATCH),
    (
        "How much do All-on-4 dental implants cost?",
        "How much do All-on-14 dental implants cost?",
        Reason.NUMBER_MISMATCH,
    ),
    # A word where the other text has its opposite: a direction, a movement, a side of a trade,
    # a time, a sex or a kin.
    (
        "Heavy rain caused flooding across southern England.",
        "Heavy rain caused flooding across northern England.",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "Shares of Tesla rose 5% on Tuesday.",
        "Tesla shares fell 5% on Tuesday.",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "How do I enable two-factor authentication?",
        "How do I disable two-factor authentication?",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "How can I gain weight quickly?",
        "How could I lose weight quickly?",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "What is the average temperature in summer?",
        "What is the average temperature in winter?",
        Reason.OPPOSITE_MISMATCH,
    ),
    ("What do women want in a man?", "What do men want in a woman?", Reason.OPPOSITE_MISMATCH),
    (
        "What are the best productivity hacks?",
        "What are the worst productivity hacks?",
        Reason.OPPOSITE_MISMATCH,
    ),
    ("How do I deposit a cheque?", "How do I withdraw a cheque?", Reason.OPPOSITE_MISMATCH),
    (
        "What is the largest country in Africa?",
        "Which is the smallest country in Africa?",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "What is the minimum age to open an account?",
        "What is the maximum age to open an account?",
        Reason.OPPOSITE_MISMATCH,
    ),
    (
        "Is distilled water the same as tap water?",
        "Is distilled water different from tap water?",
        Reason.NEGATION_MISMATCH,
    ),
]


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_true_paraphrases_pass_the_guards(a: str, b: str) -> None:
    assert guard_mismatch(a, b) is None
    assert guard_mismatch(b, a) is None


@pytest.mark.parametrize(("a", "b", "reason"), SWAPS)
def test_swaps_and_changed_details_are_refused(a: str, b: str, reason: Reason) -> None:
    assert guard_mismatch(a, b) is reason
    assert guard_mismatch(b, a) is reason


@given(st.text(alphabet=st.sampled_from("ab cd ef the of to and is by"), max_size=60))
def test_a_text_never_trades_roles_with_itself(text: str) -> None:
    assert not roles_exchanged(text, text)


def test_the_exact_tier_treats_any_run_of_whitespace_as_one(fast_cache: SemanticCache) -> None:
    fast_cache.put("What is the capital of France?", "Paris")
    for asked in (
        "What  is the\tcapital of\n\nFrance?",
        "What\u00a0is the\u2003capital of France?",
        "What is the\u200b capital of France ?",
    ):
        hit = fast_cache.get(asked)
        assert hit is not None and hit.reason is Reason.EXACT, asked


def test_a_paraphrase_of_a_refused_question_is_refused_with_it(cache: SemanticCache) -> None:
    """A swap the guards see against the question it was made from can hide behind that
    question's paraphrase, whose other wording the guards cannot line up ("recover your gmail
    account password"): a candidate nearer the refused question than the query is refused
    too. Found on QQP's generated swaps, where this was three in four of the false hits."""
    stored = {
        "How do I recover a lost Gmail password?": "A",
        "How do you recover your gmail account password?": "B",
        "Who is going to win the 2016 presidential election?": "C",
        "Who will win the 2016 presidential election?": "D",
    }
    for prompt, answer in stored.items():
        cache.put(prompt, answer)
    for swapped in (
        "How do I password a lost Gmail recover?",
        "Who is election to win the 2016 presidential going?",
    ):
        decision = cache.lookup(CacheRequest(prompt=swapped))
        assert decision.hit is None and decision.reason is Reason.ORDER_MISMATCH, swapped
    # A question nearer the query than the refused one is still served.
    for paraphrase, answer in (
        ("How can I get back a lost Gmail password?", "A"),
        ("Which candidate will win the 2016 presidential election?", "D"),
    ):
        hit = cache.lookup(CacheRequest(prompt=paraphrase)).hit
        assert hit is not None and hit.response == answer, paraphrase


def test_a_negated_question_takes_the_paraphrases_of_its_positive_along(
    cache: SemanticCache,
) -> None:
    """A query that is a stored question negated, word for word, is refused by the negation
    guard; a paraphrase of that question that negates in words the guard does not count
    ("refuse to") is just as wrong for it, when it is nearer that question than the query. Found
    on QQP's generated negations."""
    cache.put("Why doesn't Google buy Quora?", "A")
    cache.put("Why does Google refuse to buy Quora?", "B")
    decision = cache.lookup(CacheRequest(prompt="Why does Google buy Quora?"))
    assert decision.hit is None and decision.reason is Reason.NEGATION_MISMATCH


def test_a_refused_swap_ranked_below_its_paraphrase_still_takes_it_along(
    cache: SemanticCache,
) -> None:
    """The refused question need not be the nearest: the candidates past the first one that
    passes are read for a swap too ("website in my traffic" is nearer "traffic on website"
    than "traffic in my website", which it swaps)."""
    cache.put("How can I get traffic in my website?", "A")
    cache.put("How can I get traffic on website?", "B")
    decision = cache.lookup(CacheRequest(prompt="How can I get website in my traffic?"))
    assert decision.hit is None and decision.reason is Reason.ORDER_MISMATCH
    hit = cache.lookup(CacheRequest(prompt="How do I get traffic to my website?")).hit
    assert hit is not None
