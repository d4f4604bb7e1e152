from __future__ import annotations

import random
import string
import time
from typing import Any

import pytest

from gateway.capture.redact import BUILTIN_PATTERNS, Redactor, default_redactor

# Fake secrets are assembled at run time so that this file holds no string a secret scanner would flag on push.
ANTHROPIC_KEY = "sk-" + "ant-api03-" + "Zx9_" * 23 + "AA"
OPENAI_LEGACY = "sk-" + "T3BlbkFJ" * 6
OPENAI_PROJECT = "sk-" + "proj-" + "Ab3_xY-9" * 20
AWS_KEY_ID = "AK" + "IA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
GOOGLE_KEY = "AI" + "za" + "SyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"
GITHUB_PAT = "ghp" + "_" + "16C7e42F292c6912E7710c838347Ae178B4a"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = (
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aHBvQ2FBhd8pZ7Ne9A/NaqCKBv2NczPU7uvvkFqh9mFZ4cmCxYuRPgLxb5JgXG1w\n"
)


def pem(kind: str) -> str:
    label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
    return f"-----BEGIN {label}-----\n{PEM_BODY}-----END {label}-----"


M = "[REDACTED:{}]".format

# (pattern, text, redacted text) for every built-in, several shapes each.
POSITIVE: list[tuple[str, str, str]] = [
    (
        "gcp_service_account_key",
        '{"type": "service_account", "private_key_id": "ab12", "private_key": '
        '"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n", "x": 1}',
        '{"type": "service_account", "private_key_id": "ab12", "private_key": '
        f'"{M("gcp_service_account_key")}", "x": 1}}',
    ),
    ("private_key", f"key:\n{pem('RSA')}\nthanks", f"key:\n{M('private_key')}\nthanks"),
    ("private_key", pem("EC"), M("private_key")),
    ("private_key", pem("OPENSSH"), M("private_key")),
    ("private_key", pem("ENCRYPTED"), M("private_key")),
    ("private_key", pem(""), M("private_key")),
    (
        "private_key",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n"
        + PEM_BODY
        + "-----END RSA PRIVATE KEY-----",
        M("private_key"),
    ),
    (
        "private_key",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF+abc\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----",
        M("private_key"),
    ),
    # Cut short (a truncated paste): the base64 lines go, the prose after them stays.
    ("private_key", f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}That was it.", M("private_key") + "\nThat was it."),
    (
        "aws_access_key_id",
        f"export AWS_ACCESS_KEY_ID={AWS_KEY_ID}",
        f"export AWS_ACCESS_KEY_ID={M('aws_access_key_id')}",
    ),
    ("aws_access_key_id", "ASIA" + "Y34FZKBOKMUTVV7A in the log", M("aws_access_key_id") + " in the log"),
    (
        "aws_secret_access_key",
        f"aws_secret_access_key = {AWS_SECRET}\nregion = eu-west-1",
        f"aws_secret_access_key = {M('aws_secret_access_key')}\nregion = eu-west-1",
    ),
    (
        "aws_secret_access_key",
        f'{{"SecretAccessKey": "{AWS_SECRET}", "Expiration": "2026-01-01"}}',
        f'{{"SecretAccessKey": "{M("aws_secret_access_key")}", "Expiration": "2026-01-01"}}',
    ),
    (
        "aws_session_token",
        "aws_session_token=" + "IQoJb3JpZ2luX2VjEJr" * 8,
        "aws_session_token=" + M("aws_session_token"),
    ),
    ("google_api_key", f"?key={GOOGLE_KEY}&q=1", f"?key={M('google_api_key')}&q=1"),
    (
        "google_oauth_client_secret",
        '"client_id": "1.apps.googleusercontent.com", "x": "' + "GOCSPX-" + "1a2B3c4D5e6F7g8H9i0J1k2L3m4N" + '"',
        '"client_id": "1.apps.googleusercontent.com", "x": "' + M("google_oauth_client_secret") + '"',
    ),
    ("google_oauth_token", "token ya29." + "a0AfB_byC" * 8 + " ok", f"token {M('google_oauth_token')} ok"),
    ("google_oauth_token", "refresh: 1//0" + "gdRzU4Xk2bCgYIARAAGBASNwF" * 2, f"refresh: {M('google_oauth_token')}"),
    (
        "azure_key",
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=" + "Zm9v" * 22 + "==;EndpointSuffix=x",
        f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={M('azure_key')};EndpointSuffix=x",
    ),
    ("azure_key", "?sv=2022&se=2026&sig=" + "aB3dE" * 9 + "%3D&sp=r", f"?sv=2022&se=2026&sig={M('azure_key')}&sp=r"),
    ("huggingface_token", "HF_TOKEN=" + "hf" + "_" + "aB3dE6gH" * 4 + "xy", "HF_TOKEN=" + M("huggingface_token")),
    ("gitlab_token", "glpat-" + "aB3dE6gH" * 3, M("gitlab_token")),
    ("pypi_token", "-p " + "pypi-AgEIcHlwaS5vcmc" + "aB3dE6gH" * 8, "-p " + M("pypi_token")),
    ("anthropic_api_key", f"use {ANTHROPIC_KEY} here", f"use {M('anthropic_api_key')} here"),
    ("anthropic_api_key", "sk-" + "ant-oat01-" + "q" * 40, M("anthropic_api_key")),
    ("openai_api_key", f"OPENAI key {OPENAI_LEGACY}.", f"OPENAI key {M('openai_api_key')}."),
    ("openai_api_key", f"client = OpenAI(key='{OPENAI_PROJECT}')", f"client = OpenAI(key='{M('openai_api_key')}')"),
    ("github_token", f"token {GITHUB_PAT}", f"token {M('github_token')}"),
    *[("github_token", f"gh{kind}_" + "a1B2c3D4e5" * 4, M("github_token")) for kind in "ousr"],
    ("github_token", "github" + "_pat_" + "11ABCDEFG0" * 8 + "xy", M("github_token")),
    ("slack_token", "xox" + "b-1234567890-0987654321-AbCdEfGhIjKl", M("slack_token")),
    ("slack_token", "SLACK=" + "xox" + "p-1234567890-abcdefghij", "SLACK=" + M("slack_token")),
    (
        "slack_webhook",
        "curl https://hooks.slack.com/services/" + "T0123ABCD/B0123ABCD/" + "AbCdEfGhIjKlMnOpQrStUvWx",
        "curl " + M("slack_webhook"),
    ),
    ("stripe_key", "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc", M("stripe_key")),
    ("stripe_key", "rk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc", M("stripe_key")),
    ("stripe_key", "sk" + "_test_" + "4eC39HqLyjWDarjtT1zdp7dc", M("stripe_key")),
    ("jwt", f"id_token is {JWT} ok", f"id_token is {M('jwt')} ok"),
    (
        "bearer_token",
        "Authorization: Bearer abc123def456ghi789jkl0",
        "Authorization: Bearer " + M("bearer_token"),
    ),
    (
        "bearer_token",
        "curl -H 'authorization: bearer tok.en-with~chars/123+='",
        "curl -H 'authorization: bearer " + M("bearer_token") + "'",
    ),
    (
        "basic_auth",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Authorization: Basic " + M("basic_auth"),
    ),
    (
        "url_password",
        "DATABASE_URL=postgres://admin:hunter2@db.internal:5432/app",
        f"DATABASE_URL=postgres://admin:{M('url_password')}@db.internal:5432/app",
    ),
    ("url_password", "redis://:s3cr3t@cache:6379/0", f"redis://:{M('url_password')}@cache:6379/0"),
    ("url_password", "https://bob:p@ss@example.com/x", f"https://bob:{M('url_password')}@example.com/x"),
    ("env_secret", "DB_PASSWORD=supersecret\nDEBUG=1", f"DB_PASSWORD={M('env_secret')}\nDEBUG=1"),
    ("env_secret", "export STRIPE_SECRET='whsecABCdef'", f"export STRIPE_SECRET='{M('env_secret')}'"),
    ("env_secret", "docker run -e MY_API_KEY=abcdefgh img", f"docker run -e MY_API_KEY={M('env_secret')} img"),
    ("env_secret", "CI_JOB_TOKEN=glcbt-64_abc", f"CI_JOB_TOKEN={M('env_secret')}"),
    ("secret_assignment", "login(user, password=hunter2)", f"login(user, password={M('secret_assignment')})"),
    (
        "secret_assignment",
        '{"username": "ada", "password": "correct horse battery staple"}',
        f'{{"username": "ada", "password": "{M("secret_assignment")}"}}',
    ),
    ("secret_assignment", "client_secret: 'x8Yh2kLq'", f"client_secret: '{M('secret_assignment')}'"),
    ("secret_assignment", "?api_key=abc123&page=2", f"?api_key={M('secret_assignment')}&page=2"),
    ("secret_assignment", "access_token = 'opaque-value'", f"access_token = '{M('secret_assignment')}'"),
    ("secret_assignment", "PassPhrase: tr0ub4dor#3", f"PassPhrase: {M('secret_assignment')}"),
    (
        "secret_assignment",
        '"{\\"user\\": \\"ada\\", \\"password\\": \\"pa\\\\ss word\\"}"',
        f'"{{\\"user\\": \\"ada\\", \\"password\\": \\"{M("secret_assignment")}\\"}}"',
    ),
]

# (pattern, text) that must come out unchanged: the near misses of each built-in.
NEGATIVE: list[tuple[str, str]] = [
    ("gcp_service_account_key", '{"private_key_id": "4c1f9a0e5b", "private_key": ""}'),
    ("private_key", "Generate a private key with `ssh-keygen`; never share the private key."),
    ("private_key", 'marker = "-----BEGIN RSA PRIVATE KEY-----"  # code that reads keys, not a key'),
    (
        "private_key",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    ),
    (
        "private_key",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUF\n-----END CERTIFICATE-----",
    ),
    ("aws_access_key_id", "AKIA" + "IOSFODNN7EXAMP is one short"),
    ("aws_access_key_id", "base64 run xAKIA" + "IOSFODNN7EXAMPLEzz"),
    ("aws_access_key_id", "akia" + "iosfodnn7example"),
    ("aws_secret_access_key", f"checksum {AWS_SECRET} without a key name"),
    ("aws_secret_access_key", "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}"),
    ("aws_session_token", "aws_session_token = short"),
    ("google_api_key", "the AIza prefix, or AIzaSyShort"),
    ("google_oauth_client_secret", "GOCSPX-short is not one"),
    ("google_oauth_token", "ya29.short and 1//0 are prefixes"),
    ("azure_key", "AccountKey=<your key>; the sig= parameter of a SAS URL; accountkey=short"),
    ("huggingface_token", "hf_hub_download(repo_id) and self.hf_model_name"),
    ("gitlab_token", "glpat- tokens, glpat-short"),
    ("pypi_token", "pypi-AgEIcHlwaS5vcmc is the prefix"),
    ("anthropic_api_key", "Keys start with sk-ant and then api03; sk-ant-api03-xyz is cut."),
    ("openai_api_key", '<div class="sk-fading-circle-animation-delay sk-learn">'),
    ("openai_api_key", "sk-" + "proj-short"),
    ("github_token", "push to gh-pages, or the ghp_ prefix, or ghp_abc123"),
    ("slack_token", "xoxb- tokens look like xoxb-123"),
    ("slack_webhook", "https://hooks.slack.com/services/ is the endpoint"),
    ("stripe_key", "pk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc is publishable"),
    ("jwt", "a header alone: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 and eyJ.a.b"),
    ("bearer_token", "Authorization: Bearer <token>; bearer $TOKEN; the bearer of bad news"),
    ("basic_auth", "Authorization: Basic <credentials> uses basic authentication"),
    ("url_password", "https://example.com:8080/path?next=a@b.c and http://[::1]:8080/"),
    ("url_password", "ssh://git@github.com/org/repo and git@github.com:org/repo.git and https://user@host/"),
    ("env_secret", "PASSWORD_MIN_LENGTH=8\nDB_PASSWORD=$DB_PASSWORD\nMAX_TOKENS=4096\nAPI_KEY=\n"),
    ("secret_assignment", "def login(user: str, password: str) -> None: check(password=password)"),
    ("secret_assignment", '{"password": null, "api_key": "${API_KEY}", "secret": "<your secret>"}'),
    ("secret_assignment", "api_key=settings.api_key; password = getpass(); max_tokens=1000"),
    ("secret_assignment", "Reset your password: click the link. Passwords: see the vault."),
    ("secret_assignment", '"password": {"type": "string", "minLength": 12}'),
]

JSON_ONLY = {"secret_field"}


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(("name", "text", "expected"), POSITIVE, ids=[f"{c[0]}-{i}" for i, c in enumerate(POSITIVE)])
def test_builtin_pattern_redacts(redactor: Redactor, name: str, text: str, expected: str) -> None:
    out, counts = redactor.redact(text)
    assert out == expected
    assert counts == {name: expected.count(M(name))}


@pytest.mark.parametrize(("name", "text"), NEGATIVE, ids=[f"{c[0]}-{i}" for i, c in enumerate(NEGATIVE)])
def test_builtin_pattern_leaves_near_misses(redactor: Redactor, name: str, text: str) -> None:
    assert redactor.redact(text) == (text, {})


def test_every_builtin_pattern_has_positive_and_negative_cases() -> None:
    names = {pattern.name for pattern in BUILTIN_PATTERNS}
    assert {case[0] for case in POSITIVE} == names
    assert {case[0] for case in NEGATIVE} == names


@pytest.mark.parametrize("case", POSITIVE, ids=[f"{c[0]}-{i}" for i, c in enumerate(POSITIVE)])
def test_redacting_twice_changes_nothing_more(redactor: Redactor, case: tuple[str, str, str]) -> None:
    once, _ = redactor.redact(case[1])
    assert redactor.redact(once) == (once, {})


def test_counts_every_occurrence_per_pattern(redactor: Redactor) -> None:
    text = "\n".join(
        [
            f"Authorization: Bearer {ANTHROPIC_KEY}",
            f"x-api-key: {ANTHROPIC_KEY}",
            f"aws {AWS_KEY_ID} and {AWS_KEY_ID}",
            "postgres://u:pw1@h/db",
            "password=hunter2",
        ]
    )
    out, counts = redactor.redact(text)
    assert counts == {"anthropic_api_key": 2, "aws_access_key_id": 2, "url_password": 1, "secret_assignment": 1}
    # The specific pattern claims the key first; the bearer pattern then refuses to start on its marker.
    assert out.splitlines()[0] == f"Authorization: Bearer {M('anthropic_api_key')}"
    assert ANTHROPIC_KEY not in out and AWS_KEY_ID not in out and "hunter2" not in out and "pw1" not in out


def test_mixed_document_is_idempotent(redactor: Redactor) -> None:
    document = "\n".join(case[1] for case in POSITIVE) + "\n" + "\n".join(case[1] for case in NEGATIVE)
    once, counts = redactor.redact(document)
    assert set(counts) == {pattern.name for pattern in BUILTIN_PATTERNS}
    assert redactor.redact(once) == (once, {})


def test_operator_patterns_as_list_and_mapping() -> None:
    employee_ids = Redactor([{"name": "employee_id", "pattern": r"\bEMP-\d{6}\b"}])
    assert employee_ids.redact("ticket by EMP-004211, not EMP-42") == (
        "ticket by [REDACTED:employee_id], not EMP-42",
        {"employee_id": 1},
    )
    project = Redactor({"project_code": r"(?i)project\s+(?P<secret>[a-z]+)"})
    # A `secret` group limits the replacement to itself.
    assert project.redact("Project Falcon ships") == ("Project [REDACTED:project_code] ships", {"project_code": 1})


def test_operator_patterns_run_after_builtins_and_can_replace_one() -> None:
    redactor = Redactor({"internal_host": r"[a-z0-9-]+\.corp\.example\.com"})
    assert [p.name for p in redactor.patterns][-1] == "internal_host"
    assert redactor.redact(f"{ANTHROPIC_KEY} at db-1.corp.example.com") == (
        f"{M('anthropic_api_key')} at {M('internal_host')}",
        {"anthropic_api_key": 1, "internal_host": 1},
    )
    # Replacing a built-in by name, e.g. to narrow one that misfires for a company.
    narrowed = Redactor({"secret_assignment": r"password=(?P<secret>\S+)"})
    assert narrowed.redact("api_key=abc123 password=x") == (
        "api_key=abc123 password=[REDACTED:secret_assignment]",
        {"secret_assignment": 1},
    )


def test_builtins_can_be_left_out() -> None:
    redactor = Redactor({"word": "banana"}, builtins=False)
    assert redactor.redact(f"banana {ANTHROPIC_KEY}") == (f"[REDACTED:word] {ANTHROPIC_KEY}", {"word": 1})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"broken": "(unclosed"}, "'broken' is not a valid regular expression"),
        ([{"name": "bad_class", "pattern": "[z-a]"}], "'bad_class' is not a valid regular expression"),
        ({"everything": ".*"}, "'everything' matches the empty string"),
        ({"empty": ""}, "'empty' must be a non-empty"),
        ({"has space": "x"}, "name 'has space'"),
        ([{"name": "x"}], "'x' must be a non-empty"),
        ([{"name": "x", "pattern": "y", "flags": "i"}], "must be a mapping with `name` and `pattern`"),
        (["x"], "must be a mapping"),
        ("password", "must be a list"),
    ],
)
def test_invalid_operator_pattern_is_refused_by_name(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Redactor(config)


def test_operator_pattern_with_nested_secret_groups_replaces_the_outer_one() -> None:
    redactor = Redactor({"pin": r"pin (?P<secret>\d(?P<secret_tail>\d+))"}, builtins=False)
    assert redactor.redact("pin 1234 ok") == ("pin [REDACTED:pin] ok", {"pin": 1})


def test_zero_width_operator_matches_replace_nothing() -> None:
    redactor = Redactor({"lookahead": r"(?=x)|y"}, builtins=False)
    assert redactor.redact("xyx") == ("x[REDACTED:lookahead]x", {"lookahead": 1})


def test_redact_json_walks_nested_values_without_touching_the_input(redactor: Redactor) -> None:
    value = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"my key is {ANTHROPIC_KEY}"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "input": {"command": f"curl -u x {JWT}"}}]},
        ],
        "max_tokens": 1024,
        "stream": True,
        "temperature": None,
        "tuple": (GITHUB_PAT, 1.5),
    }
    out, counts = redactor.redact_json(value)
    assert counts == {"anthropic_api_key": 1, "jwt": 1, "github_token": 1}
    assert out["messages"][0]["content"][0]["text"] == f"my key is {M('anthropic_api_key')}"
    assert out["messages"][1]["content"][0]["input"]["command"] == f"curl -u x {M('jwt')}"
    assert out["tuple"] == [M("github_token"), 1.5]
    assert (out["max_tokens"], out["stream"], out["temperature"]) == (1024, True, None)
    assert value["messages"][0]["content"][0]["text"].endswith(ANTHROPIC_KEY)
    assert redactor.redact_json(out) == (out, {})


def test_redact_json_redacts_secret_named_fields(redactor: Redactor) -> None:
    value = {"Password": "plainword", "client-secret": "abcdabcd", "note": "plainword", "api_key": ""}
    out, counts = redactor.redact_json(value)
    assert out == {
        "Password": M("secret_field"),
        "client-secret": M("secret_field"),
        "note": "plainword",
        "api_key": "",
    }
    assert counts == {"secret_field": 2}
    # Near misses: not a string, a placeholder, a key that only contains the word.
    near = {"password": 12345678, "secret": "<secret>", "passwords_count": "twelve!"}
    assert redactor.redact_json(near) == (near, {})
    assert redactor.redact_json(out) == (out, {})


def test_redact_json_withholds_absurd_nesting(redactor: Redactor) -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    out, counts = redactor.redact_json({"a": deep})
    assert counts == {"nesting_limit": 1}
    assert "leaf" not in repr(out)


def test_never_raises_on_odd_strings(redactor: Redactor) -> None:
    odd = [
        "",
        "\ud800 lone surrogate \udfff password=\ud83d\ude00x1",
        "\x00\x01\x02\xff binary-looking" + bytes(range(256)).decode("latin-1"),
        "İ" * 100 + f" password=abc123 {ANTHROPIC_KEY}",  # lower-casing changes the length here
        "-----BEGIN PRIVATE KEY-----" * 1000,
        "://" * 10000 + "@",
        "\r\n" * 1000,
    ]
    for text in odd:
        out, counts = redactor.redact(text)
        assert isinstance(out, str)
        assert redactor.redact(out) == (out, {})
    out, counts = redactor.redact(odd[3])
    assert counts == {"anthropic_api_key": 1, "secret_assignment": 1}
    assert out.endswith(f" password={M('secret_assignment')} {M('anthropic_api_key')}")


def test_fails_closed_when_redaction_itself_fails(redactor: Redactor) -> None:
    class Hostile(str):
        def lower(self) -> str:
            raise RuntimeError("boom")

    assert redactor.redact(Hostile(f"key {ANTHROPIC_KEY}")) == ("[REDACTED:redaction_failed]", {"redaction_failed": 1})


def _megabyte(seed: int, alphabet: str) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(alphabet, k=1 << 20))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(_megabyte(1, string.ascii_letters + string.digits + "+/"), id="base64"),
        pytest.param(_megabyte(2, string.printable), id="printable"),
        pytest.param("a" * (1 << 20), id="one-letter-run"),
        pytest.param("eyJ" * (1 << 18), id="jwt-prefix-run"),
        pytest.param("password=" * (1 << 17), id="assignment-run"),
        pytest.param("-----BEGIN RSA PRIVATE KEY-----\n" * (1 << 15), id="pem-headers"),
        pytest.param("sk-" * (1 << 18), id="key-prefix-run"),
        # Runs that make some detect-secrets regexes backtrack: they only ever see short windows of them.
        pytest.param("token'" * (1 << 17), id="keyword-quote-run"),
        pytest.param("artif " * (1 << 17), id="artifactory-keyword-run"),
        pytest.param("cl_key: " * (1 << 17), id="cloudant-keyword-run"),
        pytest.param("=" * (1 << 20) + "!", id="entropy-unterminated-run"),
        pytest.param("A" * (1 << 20), id="pem-width-base64-run"),
        pytest.param(("A" * 64 + "\n") * (1 << 14), id="pem-lines"),
        pytest.param("-----END RSA PRIVATE KEY-----\n" * (1 << 15), id="pem-end-lines"),
    ],
)
def test_megabyte_inputs_stay_fast(redactor: Redactor, text: str) -> None:
    """Every regex must be linear: a quadratic one takes minutes here, not seconds."""
    started = time.perf_counter()
    out, _ = redactor.redact(text)
    assert time.perf_counter() - started < 5.0
    assert isinstance(out, str)


def test_megabyte_with_secrets_finds_them_all(redactor: Redactor) -> None:
    filler = _megabyte(3, string.ascii_lowercase + "  \n.,")
    secrets = [ANTHROPIC_KEY, GITHUB_PAT, AWS_KEY_ID, JWT, GOOGLE_KEY]
    text = filler
    for index, secret in enumerate(secrets):
        at = (index + 1) * len(filler) // (len(secrets) + 1)
        text = text[:at] + f" {secret} " + text[at:]
    out, counts = redactor.redact(text)
    assert all(secret not in out for secret in secrets)
    assert counts == {"anthropic_api_key": 1, "github_token": 1, "aws_access_key_id": 1, "jwt": 1, "google_api_key": 1}


def test_detect_secrets_detectors_add_what_our_patterns_do_not_know(redactor: Redactor) -> None:
    sendgrid = "SG." + "aB3dE6gH9j" * 2 + "kL" + "." + "mN0pQ3rS6t" * 4 + "uVw"
    twilio = "SK" + "0123456789abcdef" * 2
    auth_key = "Zq8" + "Yh2kLq9" * 3
    salt = "".join(random.Random(5).choices(string.ascii_letters + string.digits + "+/", k=40))
    text = f"{sendgrid}\ntwilio {twilio}\nauth_key = '{auth_key}'\nSALT: \"{salt}\""
    out, counts = redactor.redact(text)
    assert counts == {"sendgrid_key": 1, "twilio_key": 1, "secret_keyword": 1, "high_entropy_string": 1}
    assert all(secret not in out for secret in (sendgrid, twilio, auth_key, salt))
    assert redactor.redact(out) == (out, {})
    # Left out with the built-ins: an operator who turns those off gets only their own patterns.
    assert Redactor(builtins=False).redact(text) == (text, {})


def test_library_findings_that_overlap_become_one_marker(redactor: Redactor) -> None:
    salt = "".join(random.Random(6).choices(string.ascii_letters + string.digits + "+/", k=40))
    # The keyword detector and the entropy detector both see this value: one marker, named for the first.
    out, counts = redactor.redact(f'db_key = "{salt}"')
    assert out.count("[REDACTED:") == 1 and salt not in out and sum(counts.values()) == 1


def test_default_redactor_is_shared() -> None:
    assert default_redactor() is default_redactor()
    assert default_redactor().redact(ANTHROPIC_KEY) == (M("anthropic_api_key"), {"anthropic_api_key": 1})


def test_key_bodies_without_their_begin_line_take_only_the_key(redactor: Redactor) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    body = "\n".join(line for line in pem.splitlines() if not line.startswith("-----"))
    # From its first line; from its END line back; from neither end (PEM-width lines). The words around stay.
    assert redactor.redact(f"key:\n{body}\nthanks") == (f"key:\n{M('private_key')}\nthanks", {"private_key": 1})
    tail = "\n".join(body.splitlines()[3:]) + "\n-----END PRIVATE KEY-----"
    assert redactor.redact(f"rest:\n{tail}\nok") == (f"rest:\n{M('private_key')}\nok", {"private_key": 1})
    middle = "\n".join(body.splitlines()[3:10])
    assert redactor.redact(f"part:\n{middle}\nok") == (f"part:\n{M('private_key')}\nok", {"private_key": 1})
