"""Secret detectors from detect-secrets (the bc-detect-secrets distribution), run over captured text.

The library scans files line by line and reports each secret's value; we run the detectors that add to our own
patterns (vendor tokens we do not know, AWS secrets named loosely, Azure storage keys, quoted values of
secret-sounding keys, random-looking quoted strings) and say where each secret is, for the redactor to replace.
Its own file scanner is not used: some of its regexes take quadratic time on long single-line input (minified
code, base64), and most cost a full attempt at every position; so cheap checks decide which detectors run on a
text, and the costly ones only see short windows around a linear gate's matches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from detect_secrets.filters import heuristic
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.keyword import DENYLIST, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, KeywordDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

# Left out on purpose, because our own patterns cover the same secrets with linear regexes and more shapes:
# private keys (the library's also flags the bare `BEGIN ... PRIVATE KEY` line, in code that merely mentions it),
# JWTs (its regex is quadratic on a long run of `eyJ`), GitHub, Slack and Stripe tokens, and URL passwords.
# HexHighEntropyString is left out too: git SHAs, content hashes and request ids are all over a coding session,
# and hex secrets worth finding have a name beside them, which the keyword detectors see.

# Each detector with the words (lower-cased) that its every match contains: a text holding none of them is not
# scanned by it, which spares most texts most regexes. Whole-text detectors open with a literal or a narrow
# class, so the regex engine skips ahead cheaply where they do run.
_WHOLE_TEXT: dict[str, tuple[type[RegexBasedDetector], tuple[str, ...]]] = {
    "aws_key": (AWSKeyDetector, ("akia", "asia", "abia", "acca", "a3t", "aws")),
    "artifactory_token": (ArtifactoryDetector, ("akc",)),
    "discord_bot_token": (DiscordBotTokenDetector, (".",)),
    "mailchimp_key": (MailchimpDetector, ("-us",)),
    "npm_token": (NpmDetector, ("npm", "_authtoken")),
    "sendgrid_key": (SendGridDetector, ("sg.",)),
    "square_oauth_secret": (SquareOAuthDetector, ("sq0csp-",)),
    "twilio_key": (TwilioKeyDetector, ("ac", "sk")),
}
# Run only on lines with a secret word followed by a long value (_NAMED_GATE): their regexes open with lookbehinds
# and optional groups, which cost a full attempt at every position of the text (a third of a second a MiB together).
_NAMED_VALUE: dict[str, tuple[type[RegexBasedDetector], tuple[str, ...]]] = {
    "cloudant_credential": (CloudantDetector, ("cl",)),
    "ibm_cloud_iam_key": (IbmCloudIamDetector, ("key", "pwd", "pass", "token")),
    "ibm_cos_hmac_key": (IbmCosHmacDetector, ("secret",)),
    "softlayer_key": (SoftlayerDetector, ("sl", "softlayer")),
}
# Regexes not run at all: nested optional repetition backtracks without bound on a repeated keyword (Artifactory's
# `artif` followed by up to three lines: a megabyte of `artif ` takes most of a minute). Its `AKC` form still runs.
_UNBOUNDED = ("(?:.{0,100}\\n?){0,2}",)
KEYWORD = "secret_keyword"
HIGH_ENTROPY = "high_entropy_string"
AZURE_STORAGE = "azure_storage_key"
NAMES: tuple[str, ...] = (*_WHOLE_TEXT, *_NAMED_VALUE, AZURE_STORAGE, KEYWORD, HIGH_ENTROPY)

# The detectors look at one line at a time; a longer line is looked at in windows this long, overlapping so that
# a secret across a window edge is whole in one of them.
WINDOW = 2048
OVERLAP = 256
# Values shorter than this are left to our own patterns, which judge short values with their context: replacing a
# four-letter value everywhere in the text would cost more than it protects.
MIN_VALUE = 6
_STRIP = " \t\r\n\"'`=:,;"
_MARKER = "[REDACTED:"

# Gates run on the lower-cased text (a case-insensitive alternation is ten times slower in `re`).
# The keyword detector needs a secret word and a quote after it; a line without both is not worth its regexes.
_KEYWORD_GATE = re.compile(
    "(?:" + "|".join(word.replace(".*", ".{0,40}") for word in DENYLIST) + r")[^\n'\"`]{0,80}['\"`]"
)
_NAMED_GATE = re.compile(r"(?:key|pwd|pw|pass|token)[^\n]{0,40}[a-z0-9_\-]{24}")
# Azure storage keys are 64 random bytes: 86-88 base64 characters ending in `==`.
_AZURE_GATE = re.compile(r"[a-z0-9+/]{86}[a-z0-9+/]{0,2}==")
# The Azure detector only reports a key with `AccountKey` or `azure` near it.
_AZURE_WORDS = ("account", "azure")
# The entropy detector's candidates: a run of its characters after a quote, `:` or `=` (spaces allowed between),
# ending at a quote or the end of the line, as the library's own regex has it; found here by maximal runs, which
# is linear where the library's backtracks.
_MIN_ENTROPY_RUN = 20
_B64_RUN = re.compile(rf"[A-Za-z0-9+/\\\-_=]{{{_MIN_ENTROPY_RUN},}}")
_ASSIGNMENT_IN_RUN = re.compile(r"=(?=[^=])")


@dataclass(frozen=True, slots=True)
class Finding:
    """Where one detector found a secret: from `start` up to `end` in the text it read."""

    name: str
    start: int
    end: int


class LibraryDetectors:
    """The detect-secrets detectors we use, ready to run; one instance per process (they hold compiled regexes)."""

    def __init__(self, entropy_limit: float = 4.5) -> None:
        self._whole_text = _compiled(_WHOLE_TEXT)
        self._named_value = _compiled(_NAMED_VALUE)
        self._keyword = KeywordDetector()
        self._azure = AzureStorageKeyDetector()
        self._entropy = Base64HighEntropyString(limit=entropy_limit)

    def find(self, text: str) -> list[Finding]:
        """Where the detectors see secrets in the text, in no particular order; spans may overlap."""
        found: list[Finding] = []
        lowered = text.lower()
        if len(lowered) != len(text):
            lowered = text.translate(_ASCII_LOWER)  # the same length, so the gates' offsets hold
        for name, regex, words in self._whole_text:
            if _any_in(words, lowered):
                _scan(regex, name, text, 0, found)
        named_value = [(name, regex) for name, regex, words in self._named_value if _any_in(words, lowered)]
        for offset, window in _windows_around(text, lowered, _NAMED_GATE) if named_value else ():
            for name, regex in named_value:
                _scan(regex, name, window, offset, found)
        for offset, window in _windows_around(text, lowered, _KEYWORD_GATE):
            for value in self._keyword.analyze_string(window, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP):
                if not _filtered(value, window) and _secret_like(value):
                    _occurrences(KEYWORD, value, window, offset, found)
        for offset, window in _windows_around(text, lowered, _AZURE_GATE) if _any_in(_AZURE_WORDS, lowered) else ():
            for secret in self._azure.analyze_line(filename="", line=window):
                if secret.secret_value:
                    _occurrences(AZURE_STORAGE, secret.secret_value, window, offset, found)
        found.extend(self._high_entropy(text))
        return found

    def _high_entropy(self, text: str) -> Iterator[Finding]:
        """Quoted (or assigned, to the end of the line) runs of base64 characters more random than the limit."""
        limit = self._entropy.entropy_limit
        for match in _B64_RUN.finditer(text):
            start, end = match.span()
            if text[end : end + 1] not in ("", "\n", "\r", "'", '"'):
                continue
            line_start = text.rfind("\n", 0, start) + 1
            opener = text[max(line_start, start - 64) : start].rstrip(" \t")
            if not opener or opener[-1] not in "'\":=":
                # `=` is a base64 character too: in `salt=...` the run starts at the name, the value after it.
                assigned = _ASSIGNMENT_IN_RUN.search(text, start, end)
                if assigned is None or end - assigned.end() < _MIN_ENTROPY_RUN:
                    continue
                start = assigned.end()
            value = text[start:end]
            if (
                self._entropy.calculate_shannon_entropy(value) > limit
                and not _filtered(value, text[line_start : line_start + WINDOW])
                and not _PATH_OR_ID.match(value)
            ):
                yield Finding(HIGH_ENTROPY, start, end)


def _any_in(words: tuple[str, ...], text: str) -> bool:
    return any(word in text for word in words)


def _compiled(
    detectors: dict[str, tuple[type[RegexBasedDetector], tuple[str, ...]]],
) -> list[tuple[str, re.Pattern[str], tuple[str, ...]]]:
    regexes = []
    for name, (detector, words) in detectors.items():
        for regex in detector.denylist:  # type: ignore[attr-defined]
            if not any(construct in regex.pattern for construct in _UNBOUNDED):
                # MULTILINE, so that `^` and `$` mean what they mean to the library, which scans line by line.
                regexes.append((name, re.compile(regex.pattern, regex.flags | re.MULTILINE), words))
    return regexes


def _scan(regex: re.Pattern[str], name: str, text: str, offset: int, found: list[Finding]) -> None:
    for match in regex.finditer(text):
        # As the library's findall does: the capturing groups that matched when there are any, else the match.
        spans = [match.span(index) for index in range(1, (regex.groups or 0) + 1) if match.group(index)]
        for start, end in spans or [match.span()]:
            value = text[start:end]
            # The library's matches may include the quote or space around a token; the secret is what is inside.
            start += len(value) - len(value.lstrip(_STRIP))
            end -= len(value) - len(value.rstrip(_STRIP))
            if end - start >= MIN_VALUE:
                found.append(Finding(name, offset + start, offset + end))


def _occurrences(name: str, value: str, window: str, offset: int, found: list[Finding]) -> None:
    """A value a detector reported: every place it is in the window it was found in."""
    value = value.strip(_STRIP)
    if len(value) < MIN_VALUE or _MARKER in value:
        return
    at = window.find(value)
    while at >= 0:
        found.append(Finding(name, offset + at, offset + at + len(value)))
        at = window.find(value, at + len(value))


def _secret_like(value: str) -> bool:
    """A keyword's value worth redacting: not a URL without credentials, nor a plain lower-case word or name
    (`latest`, `count-tokens`), which the keyword detector reports after any key containing `token`."""
    value = value.strip(_STRIP)
    if "://" in value and "@" not in value:
        return False
    return not _PLAIN_NAME.fullmatch(value)


def _filtered(value: str, line: str) -> bool:
    """The library's heuristic filters: values that look like secrets to a regex but are not."""
    value = value.strip(_STRIP)
    return (
        heuristic.is_sequential_string(value)
        or heuristic.is_potential_uuid(value)
        or heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_not_alphanumeric_string(value)
        or heuristic.is_aws_arn(value)
        or heuristic.is_likely_id_string(value, line)
        or heuristic.is_indirect_reference(line)
    )


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN_NAME = re.compile(r"[a-z]+(?:[-_. ][a-z]+)*")
# Random-looking but not secret: paths, the ids Anthropic's API gives messages, tool calls and requests, and the
# content hashes of package locks (`sha512-...`).
_PATH_OR_ID = re.compile(r"/|\./|(?:msg|toolu|srvtoolu|req|file|msgbatch)_|sha(?:1|256|384|512)-")


def _windows_around(text: str, lowered: str, gate: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    """The lines of `text` where the gate matches `lowered`, each at most WINDOW long (a window around the match
    in a longer line), with the offset each starts at."""
    position = 0
    for match in gate.finditer(lowered):
        if match.start() < position:
            continue
        line_start = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.end())
        if line_end < 0:
            line_end = len(text)
        if line_end - line_start <= WINDOW:
            yield line_start, text[line_start:line_end]
            position = line_end
        else:
            start = max(line_start, match.start() - OVERLAP)
            end = min(line_end, start + WINDOW)
            yield start, text[start:end]
            position = max(end - OVERLAP, match.end())


_shared: LibraryDetectors | None = None


def library_detectors() -> LibraryDetectors:
    """The process's detectors, built once."""
    global _shared
    if _shared is None:
        _shared = LibraryDetectors()
    return _shared
