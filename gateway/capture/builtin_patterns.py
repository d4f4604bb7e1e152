"""The built-in redaction patterns: secrets with a known shape, and values assigned to secret-sounding names.

Every regex here must stay linear in the length of the text (the capture worker runs them over megabytes):
each opens with a literal so that the engine skips ahead with a substring search, and no repetition nests."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

MARKER = "[REDACTED:{name}]"
# Every built-in value pattern refuses to start on a marker, so redacting twice changes nothing more.
_NOT_MARKER = r"(?!\[REDACTED:)"
# A JSON string body with its escapes, for values inside JSON text (a file the model read, for example).
_JSON_STRING = r'(?:[^"\\\n]|\\.){1,20000}'

# Unquoted values that are code or placeholders rather than secrets (`password=None`, `api_key=settings.api_key`):
# an unquoted value must contain a digit or a symbol to count as a secret.
_SECRETISH = re.compile(r"[0-9!@#%^&*+=~?|]")
_PLACEHOLDERS = frozenset(("none", "null", "nil", "true", "false", "undefined", "string", "str", "password", "secret"))
# Words that follow `password:` in code and prose rather than passwords (type hints, schema values, masks).
_NOT_PASSWORDS = _PLACEHOLDERS | frozenset(
    (
        "required",
        "optional",
        "bytes",
        "text",
        "any",
        "int",
        "object",
        "secretstr",
        "secretbytes",
        "hidden",
        "masked",
        "redacted",
        "empty",
        "unset",
        "blank",
        "default",
        "example",
        "yes",
        "no",
        "on",
        "off",
    )
)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One named pattern; only the `secret*` groups are replaced when it has any, else the whole match."""

    name: str
    # Applied in turn. Each built-in regex opens with a literal, so the regex engine skips ahead with a fast
    # substring search instead of trying every position (a lookbehind or a case-insensitive start defeats that).
    regexes: tuple[re.Pattern[str], ...]
    # Called with the group name ("" for the whole match) and its text; a value that fails is left alone.
    check: Callable[[str, str], bool] | None = None
    # The regexes are written for lower-cased text (case-insensitive keys keep their literal start that way);
    # these are the same with IGNORECASE, for text whose lower-casing changes its length (and so the offsets).
    caseless: tuple[re.Pattern[str], ...] = ()
    # For shapes a regex cannot find linearly: yields the (start, end) of each secret in the text.
    finder: Callable[[str], Iterator[tuple[int, int]]] | None = None


def quoted_value_ok(value: str) -> bool:
    """A quoted assignment value worth redacting: not empty, not a template or placeholder."""
    stripped = value.strip()
    if len(stripped) < 4 or stripped.lower() in _PLACEHOLDERS:
        return False
    return not stripped.startswith(("$", "{{", "<", "%(", "*****", "[REDACTED:"))


def _bare_value_ok(value: str) -> bool:
    """An unquoted assignment value worth redacting: secret-looking, not an identifier or a variable."""
    return quoted_value_ok(value) and _SECRETISH.search(value) is not None


def _assignment_check(group: str, value: str) -> bool:
    """Quoted values may be anything but a placeholder; bare ones must look like a secret, unless a password ends
    the line (`password: letters`), where any word but a type or a placeholder is one."""
    if group == "secret_bare":
        return _bare_value_ok(value)
    if group == "secret_word":
        return quoted_value_ok(value) and value.lower() not in _NOT_PASSWORDS
    return quoted_value_ok(value)


def _token(prefix: str, width: int, body: str) -> str:
    """A token opening with a literal prefix `width` characters long, only where a run of token characters starts."""
    # The run-start check sits after the prefix, where it looks back past it: placed first it would cost the
    # literal search, and without it a pattern tried inside a megabyte-long run would rescan the run each time.
    return prefix + rf"(?<![A-Za-z0-9_\-][\s\S]{{{width}}})" + body + r"(?![A-Za-z0-9_\-])"


def _builtin(
    name: str,
    regexes: str | Iterable[str],
    check: Callable[[str, str], bool] | None = None,
    *,
    lowered: bool = False,
    finder: Callable[[str], Iterator[tuple[int, int]]] | None = None,
) -> Pattern:
    sources = (regexes,) if isinstance(regexes, str) else tuple(regexes)
    compiled = tuple(re.compile(source) for source in sources)
    caseless = tuple(re.compile(source, re.IGNORECASE) for source in sources) if lowered else ()
    return Pattern(name, compiled, check, caseless, finder)


# Quotes may come escaped (`\"password\": \"x\"`), as in JSON held inside a JSON string; quoted values end at
# the first closing quote, escaped or not.
_ASSIGNED = r"""(?:\\?["'])?[ \t]*[:=][ \t]*"""
_ASSIGNED_VALUE = (
    _ASSIGNED
    + r'(?:\\?"(?P<secret_dq>(?!\[redacted:)[^"\n]{1,500}?)\\?"'
    + r"""|\\?'(?P<secret_sq>(?!\[redacted:)[^'\n]{1,500}?)\\?'"""
    + r"""|(?P<secret_bare>[^\s"'`,;&<>(){}\[\]\\]{1,500}))"""
)
_WORD_VALUE = r"""(?P<secret_word>(?!\[redacted:)[^\s"'`,;&<>(){}\[\]\\]{4,200})"""
_TOKEN_KINDS = ("access", "auth", "refresh", "id", "api", "session", "bearer")
_TOKEN_KEYS = "|".join(f"(?<={kind}{sep}token)" for kind in _TOKEN_KINDS for sep in ("_", "-", ""))

# A private key's body without its BEGIN line (a paste that lost it, `tail -n +2 key.pem`): the DER encoding of
# every common key type opens with a few fixed bytes, so its base64 opens with these characters.
_KEY_BODY_STARTS = (
    r"(?:M(?:II[A-Za-z0-9+/]{3}IBA(?:AK|D[AC])"  # RSA and DSA (PKCS#1, and PKCS#8)
    r"|HcCAQEE|HQCAQEE|IGkAgEBBD|IHcAgEBBE"  # EC (SEC1: P-256, secp256k1, P-384, P-521)
    r"|I[A-Za-z0-9+/]{2}AgEAMB[AM]GByqGSM49AgEG"  # EC (PKCS#8)
    r"|[A-Za-z0-9+/]{3}AQAwBQYDK2V[wx]"  # Ed25519, Ed448 (PKCS#8)
    r"|I[A-Za-z0-9+/]{2,3}(?:MF8GCSqGSIb3DQEFDT|DBfBgkqhkiG9w0BBQ0w))"  # encrypted PKCS#8 (PBES2)
    r"|b3BlbnNzaC1rZXktdjE)"  # OpenSSH
)
# The rest of such a body: base64 to the end of the line, then whole lines of base64 at a key's width (newlines
# real or escaped, as in JSON text), a shorter last line, and the END line if it is there. The last line must
# hold a capital, a digit or a symbol, so that a one-word line of prose after the key (`thanks`) stays.
_EOL = r"(?=[ \t]*(?:\r?\n|\\[rn]|$))"
_NEWLINE = r"(?:\r?\n|\\r\\n|\\n)[ \t]*"
_KEY_BODY_REST = (
    r"[A-Za-z0-9+/=]*"
    + _EOL
    + rf"(?:{_NEWLINE}[A-Za-z0-9+/=]{{60,76}}{_EOL}){{0,2000}}"
    + rf"(?:{_NEWLINE}(?=[a-z]{{0,76}}[A-Z0-9+/=])[A-Za-z0-9+/=]{{4,76}}{_EOL})?"
    + rf"(?:{_NEWLINE}-----END[A-Z0-9 ]{{0,40}}PRIVATE KEY(?: BLOCK)?-----)?"
)
_END_LINE = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_BASE64_LINE = re.compile(r"[ \t]*[A-Za-z0-9+/]+={0,2}[ \t]*\r?")
# Three lines or more of exactly 64 base64 characters (PEM's width; OpenSSH's is 70): the middle of a key, pasted
# without either end. An `openssl base64` dump of anything else looks the same and is redacted too.
_PEM_LINES = re.compile(
    r"(?<![^\n])(?:[A-Za-z0-9+/]{64}|[A-Za-z0-9+/]{70})\r?\n(?:[A-Za-z0-9+/]{64,70}\r?\n)+"
    r"[A-Za-z0-9+/]{4,70}={0,2}(?![^\r\n])"
)
# A run right under any other BEGIN line (certificates, public keys, PGP signatures and messages, CSRs) is that
# block's body, which is public or not a key.
_OTHER_PEM = re.compile(r"-----BEGIN (?![A-Z0-9 ]{0,40}PRIVATE KEY)[A-Z0-9 ]{1,60}-----")
_MAX_KEY_LINES = 2000


def _key_bodies(text: str) -> Iterator[tuple[int, int]]:
    """Private key bodies a regex cannot find from their start: an END line with the base64 lines above it (the
    BEGIN line lost), and runs of PEM-width base64 lines with neither end."""
    for match in _END_LINE.finditer(text):
        # Walk back over the whole base64 lines right above the END line.
        start = match.start()
        lines = 0
        while lines < _MAX_KEY_LINES and start > 0 and text[start - 1] == "\n":
            previous = text.rfind("\n", 0, start - 1) + 1
            if not _BASE64_LINE.fullmatch(text, previous, start - 1):
                break
            start = previous
            lines += 1
        if lines:
            yield start, match.end()
    for match in _PEM_LINES.finditer(text):
        above = text.rfind("\n", 0, max(match.start() - 1, 0)) + 1
        if not _OTHER_PEM.match(text, above):
            yield match.span()


# Order matters: specific shapes first, so a key inside `Authorization: Bearer sk-ant-...` or `api_key=...`
# is counted under its own name and the generic patterns then refuse to start on the marker.
BUILTIN_PATTERNS: tuple[Pattern, ...] = (
    _builtin(
        "gcp_service_account_key",
        r'"private_key"[ \t]*:[ \t]*"' + _NOT_MARKER + r"(?P<secret>" + _JSON_STRING + ')"',
    ),
    _builtin(
        "private_key",
        [
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            # A complete block: anything up to the END line that does not cross another `-----` run (so a
            # thousand BEGIN lines without an END stay linear)...
            r"(?:(?:[^-]|-(?!----)){0,100000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            # ...or a block cut short (a truncated paste): its header lines and base64 lines, escaped or not.
            r"|(?:(?:\s|\\[nr])*(?:[A-Za-z0-9+/=]{8,}|(?:Proc-Type|DEK-Info|Comment|Version):[^\n\\]*)){1,2000})",
            # A body without its BEGIN line, from the start of the key.
            _KEY_BODY_STARTS + _KEY_BODY_REST,
        ],
        finder=_key_bodies,
    ),
    _builtin(
        "aws_secret_access_key",
        [
            # Matching from `secret` keeps the literal start; the key before it (`aws_`) is kept anyway.
            r"secret_?(?:access_?)?key" + _ASSIGNED + r"""["']?(?P<secret>[a-z0-9/+=]{40})(?![a-z0-9/+=])""",
            # No name at all, but right after its key id: the IAM console's CSV (`AKIA...,wJalr...`), a table, a
            # line of `aws configure` answers. Before aws_access_key_id, which then replaces the id.
            _token("a(?:kia|sia|bia|cca)", 4, "[a-z0-9]{16}")
            + r"""\\?["']?[ \t]*[,;|:\t= ][ \t]*\\?["']?(?P<secret>[a-z0-9/+]{40})(?![a-z0-9/+=])""",
        ],
        lowered=True,
    ),
    _builtin("aws_access_key_id", _token("A(?:KIA|SIA|BIA|CCA)", 4, "[A-Z0-9]{16}")),
    _builtin(
        "aws_session_token",
        r"session_?token" + _ASSIGNED + r"""["']?(?P<secret>[a-z0-9/+=]{100,4000})(?![a-z0-9/+=])""",
        lowered=True,
    ),
    _builtin("google_api_key", _token("AIza", 4, r"[0-9A-Za-z_\-]{35}")),
    _builtin("google_oauth_client_secret", _token("GOCSPX-", 7, r"[0-9A-Za-z_\-]{28}")),
    _builtin(
        "google_oauth_token",
        [_token(r"ya29\.", 5, r"[0-9A-Za-z_\-]{20,4000}"), _token("1//0", 4, r"[0-9A-Za-z_\-]{30,1000}")],
    ),
    _builtin(
        "azure_key",
        [
            # Storage connection strings; Service Bus and Event Hubs ones; the signature of a SAS URL or token.
            r"accountkey[ \t]*=[ \t]*(?P<secret>[a-z0-9+/]{20,200}={0,2})",
            r"sharedaccesskey[ \t]*=[ \t]*(?P<secret>[a-z0-9+/]{20,200}={0,2})",
            r"sig=(?<=[?&;]sig=)(?P<secret>[a-z0-9%+/]{30,200}(?:=|%3d){0,2})",
        ],
        lowered=True,
    ),
    _builtin("huggingface_token", _token("hf_", 3, "[A-Za-z0-9]{30,200}")),
    _builtin("gitlab_token", _token("glpat-", 6, r"[A-Za-z0-9_\-]{20,200}")),
    _builtin("pypi_token", _token("pypi-AgEIcHlwaS5vcmc", 20, r"[A-Za-z0-9_\-]{50,1000}")),
    _builtin("anthropic_api_key", _token("sk-ant-", 7, r"[A-Za-z0-9_\-]{20,1000}")),
    _builtin(
        "openai_api_key",
        # Legacy keys are one unbroken alphanumeric run; the newer ones say what they are. Hyphenated words such
        # as CSS class names (`sk-fading-circle`) fit neither.
        _token("sk-", 3, r"(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,1000}|[A-Za-z0-9]{32,1000})"),
    ),
    _builtin(
        "github_token",
        [_token("gh", 2, "[pousr]_[A-Za-z0-9]{36,255}"), _token("github_pat_", 11, "[A-Za-z0-9_]{22,255}")],
    ),
    _builtin("slack_token", _token("xox", 3, r"[abposr]-[A-Za-z0-9\-]{10,500}")),
    _builtin(
        "slack_webhook",
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,20}/B[A-Z0-9]{6,20}/[A-Za-z0-9]{16,40}",
    ),
    _builtin(
        "stripe_key",
        # Publishable keys (pk_live_) are public by design and stay.
        [_token("sk_", 3, "(?:live|test)_[0-9A-Za-z]{20,250}"), _token("rk_", 3, "(?:live|test)_[0-9A-Za-z]{20,250}")],
    ),
    _builtin(
        "jwt",
        _token("eyJ", 3, r"[A-Za-z0-9_\-]{8,20000}\.[A-Za-z0-9_\-]{8,50000}\.[A-Za-z0-9_\-]{16,2000}"),
    ),
    _builtin(
        "bearer_token",
        r"bearer[ \t]+" + _NOT_MARKER.lower() + r"(?P<secret>[a-z0-9\-._~+/]{16,5000}=*)(?![a-z0-9\-._~+/=])",
        lowered=True,
    ),
    _builtin(
        "basic_auth",
        r"authorization[ \t]*:[ \t]*basic[ \t]+(?P<secret>[a-z0-9+/]{8,2000}=*)(?![a-z0-9+/=])",
        lowered=True,
    ),
    _builtin(
        "url_password",
        # Starting at `://` uses a literal search, and the user (kept) may be empty, as in redis://:pw@host.
        r"://[^\s:/?#@\[\]\"'<>]{0,256}:" + _NOT_MARKER + r"(?P<secret>[^\s/?#\"'<>]{1,256})@",
    ),
    _builtin(
        "env_secret",
        # Dotenv, shell and `docker -e` style: an upper-case name ending in a secret word, `=`, any value. One
        # regex per literal again; those ending in KEY share one and check the word before it.
        [
            word + r"""=(?!\[REDACTED:)["']?(?P<secret>[^\s"'$][^\s"']{0,1000})"""
            for word in (
                "PASS(?:WORD|WD)",
                # DB_PASS, but not BYPASS or COMPASS; DB_PWD, but not the shell's PWD.
                "PASS(?<![A-Za-z0-9]PASS)",
                "_PWD",
                "SECRET",
                "TOKEN",
                "CREDENTIALS",
                "KEY(?:" + "|".join(f"(?<={w}KEY)" for w in ("API_", "API", "SECRET_", "ACCESS_", "PRIVATE_")) + ")",
            )
        ],
        _assignment_check,
    ),
    _builtin(
        "secret_assignment",
        # One regex per key word, each opening with its literal; the key is kept, so a match may start inside it.
        [
            r"pass(?:word|wd|phrase)" + _ASSIGNED_VALUE,
            r"_(?:pass|pwd)" + _ASSIGNED_VALUE,
            # A password alone at the end of its line, letters only: YAML and config files, `password: letters`.
            r"pass(?:word|wd|phrase)" + _ASSIGNED + _WORD_VALUE + _EOL,
            r"secret(?:_?key)?" + _ASSIGNED_VALUE,
            r"api[_\-]?key" + _ASSIGNED_VALUE,
            r"token(?:" + _TOKEN_KEYS + ")" + _ASSIGNED_VALUE,
        ],
        _assignment_check,
        lowered=True,
    ),
)
