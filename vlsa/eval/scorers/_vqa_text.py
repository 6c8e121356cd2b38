"""VQA answer normalisation and the soft accuracy, as the official VQA evaluation defines them.

Two normalisers exist in the reference pipelines, and both are reproduced here:

- :func:`vqa_normalize` is what the VQA / VizWiz evaluation servers apply to a submitted answer:
  punctuation handling, then number words to digits, articles dropped, contractions restored.
- :func:`evalai_normalize` is the answer processor the LLaVA scripts run before a VQAv2 or VizWiz
  submission, and on both sides of the TextVQA comparison: it first lowercases, drops ``,`` and
  ``?`` and splits ``'s`` off, then applies the same punctuation / digit / article steps.

:func:`soft_accuracy` is ``min(#matching humans / 3, 1)`` averaged over the leave-one-out subsets of
the ground-truth answers (the 10-choose-9 subsets when there are ten answers).
"""

from __future__ import annotations

import re

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
# Replaced (by "" or " ") wherever they occur. "'" and ":" are kept, as in the official list.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit is dropped, so "3.5" keeps its point and "yes." loses it.
_PERIOD = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (= 32) where re.sub takes its count: at most 32 periods go.
_PERIOD_LIMIT = 32

# Missing apostrophes restored, word by word, after lowercasing ("dont" -> "don't"). The official
# table's capitalised keys ("Im", "Ive", "Id've") can never match a lowercased word and are left out;
# the odd entries ("somebody'd" -> "somebodyd") are kept because they change scores.
_CONTRACTION_PAIRS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't  couldn'tve couldn't've
couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't  hadnt hadn't  hadnt've hadn't've
hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd  hed've he'd've  he'dve he'd've  hes he's
howd how'd  howll how'll  hows how's  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've  itll it'll
maam ma'am  mightnt mightn't  mightnt've mightn't've  mightn'tve mightn't've  mightve might've
mustnt mustn't  mustve must've  neednt needn't  notve not've  oclock o'clock  oughtnt oughtn't
ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've
shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've  somebodyll somebody'll
somebodys somebody's  someoned someone'd  someoned've someone'd've  someone'dve someone'd've
someonell someone'll  someones someone's  somethingd something'd  somethingd've something'd've
something'dve something'd've  somethingll something'll  thats that's  thered there'd
thered've there'd've  there'dve there'd've  therere there're  theres there's  theyd they'd
theyd've they'd've  they'dve they'd've  theyll they'll  theyre they're  theyve they've  twas 'twas
wasnt wasn't  wed've we'd've  we'dve we'd've  weve we've  werent weren't  whatll what'll
whatre what're  whats what's  whatve what've  whens when's  whered where'd  wheres where's
whereve where've  whod who'd  whod've who'd've  who'dve who'd've  wholl who'll  whos who's
whove who've  whyll why'll  whyre why're  whys why's  wont won't  wouldve would've
wouldnt wouldn't  wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all  yall'll y'all'll
y'allll y'all'll  yall'd've y'all'd've  y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd
youd've you'd've  you'dve you'd've  youll you'll  youre you're  youve you've
"""
_words = _CONTRACTION_PAIRS.split()
CONTRACTIONS = dict(zip(_words[0::2], _words[1::2]))


def strip_punctuation(text: str) -> str:
    """The official punctuation step.

    Each listed mark is deleted when it touches a space somewhere in the input (or when the input
    contains a digit-comma-digit such as "1,000", in which case every mark is deleted), and is
    otherwise replaced by a space ("t-shirt" -> "t shirt"). Then periods not followed by a digit go.
    """
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or has_digit_comma else " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def digits_articles_contractions(text: str) -> str:
    """Lowercase, split on whitespace, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def vqa_normalize(text: str) -> str:
    """What the official evaluation does to a submitted answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_articles_contractions(strip_punctuation(text))


def evalai_normalize(text: str) -> str:
    """The answer processor LLaVA applies before VQAv2/VizWiz submission and in TextVQA scoring."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_articles_contractions(strip_punctuation(text))


def soft_accuracy(answer: str, gt_answers: list[str]) -> float:
    """``min(#other humans who gave answer / 3, 1)`` averaged over leaving each human out in turn.

    With ten humans, an answer given by 3 of them scores 0.9, by 2 scores 0.6, by 1 scores 0.3.
    Both sides must already be normalised; comparison is exact string equality.
    """
    if not gt_answers:
        raise ValueError("soft_accuracy needs at least one ground-truth answer")
    matches = sum(gt == answer for gt in gt_answers)
    total = 0.0
    for gt in gt_answers:
        others = matches - (gt == answer)  # humans agreeing with `answer` once this one is left out
        total += min(1.0, others / 3)
    return total / len(gt_answers)
