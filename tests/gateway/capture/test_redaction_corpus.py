"""The redaction corpus: secrets as people paste them (each must be gone after redaction) and ordinary text from
coding sessions (each must come out unchanged). Fake secrets are assembled at run time so that this file holds
no string a secret scanner would flag on push; private keys and certificates are generated, so they are real.

Recorded result (also in docs/security-teams.md): every must-redact sample redacted (100 %), no must-keep sample
touched (false positives 0 of the must-keep samples)."""

from __future__ import annotations

import datetime as dt
import json
import random
import string
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.capture.redact import Redactor

_rng = random.Random(1729)


def rand(alphabet: str, length: int) -> str:
    return "".join(_rng.choices(alphabet, k=length))


B64 = string.ascii_letters + string.digits + "+/"
ALNUM = string.ascii_letters + string.digits
LOWER_HEX = "0123456789abcdef"

AWS_KEY_ID = "AK" + "IA" + rand(string.ascii_uppercase + string.digits, 16)
AWS_SECRET = rand(B64, 40)
AWS_SESSION_KEY_ID = "AS" + "IA" + rand(string.ascii_uppercase + string.digits, 16)
AZURE_ACCOUNT_KEY = rand(B64, 86) + "=="
HF_TOKEN = "hf" + "_" + rand(ALNUM, 34)
BEARER = rand(ALNUM, 40)
SAS_SIGNATURE = rand(ALNUM, 43) + "%3D"
SERVICE_BUS_KEY = rand(B64, 43) + "="
SALT = rand(B64, 40)
NPM_TOKEN = "npm" + "_" + rand(ALNUM, 36)
SLACK_WEBHOOK = "https://hooks.slack.com/services/" + "T0123ABCD/B0123ABCD/" + rand(ALNUM, 24)


def _pem(key: object, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = _pem(RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL)
PKCS8_PEM = _pem(RSA_KEY, serialization.PrivateFormat.PKCS8)
EC_PEM = _pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.TraditionalOpenSSL)
ED25519_PEM = _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8)
OPENSSH_PEM = _pem(RSA_KEY, serialization.PrivateFormat.OpenSSH)


def _body(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _certificate() -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.example.com")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(RSA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(RSA_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Leak:
    """A text holding secrets: none of `secrets` may survive redaction."""

    id: str
    text: str
    secrets: tuple[str, ...]


def leak(id: str, text: str, *secrets: str) -> Leak:
    return Leak(id, text, secrets)


RSA_BODY = _body(RSA_PEM)
PKCS8_ONE_LINE = "".join(_body(PKCS8_PEM))
PGP_LINES = [rand(B64, 64) for _ in range(4)] + [rand(B64, 20) + "="]
MUST_REDACT: list[Leak] = [
    # The misses the issue found, first.
    leak(
        "aws-iam-console-csv",
        f"Access key ID,Secret access key\n{AWS_KEY_ID},{AWS_SECRET}\n",
        AWS_KEY_ID,
        AWS_SECRET,
    ),
    leak(
        "aws-iam-user-csv",
        "User name,Password,Access key ID,Secret access key,Console login link\n"
        f"ci-bot,,{AWS_KEY_ID},{AWS_SECRET},https://123456789012.signin.aws.amazon.com/console",
        AWS_KEY_ID,
        AWS_SECRET,
    ),
    leak("aws-pair-space-separated", f"use {AWS_KEY_ID} {AWS_SECRET} for the deploy", AWS_KEY_ID, AWS_SECRET),
    leak("db-pass-env", "DB_HOST=db.internal\nDB_PASS=Xq7-mn2Lw\nDB_USER=app", "Xq7-mn2Lw"),
    leak("db-pass-env-letters", "DB_PASS=correcthorse\n", "correcthorse"),
    leak("password-colon-letters-yaml", "database:\n  user: app\n  password: letters\n  host: db\n", "letters"),
    leak("password-colon-letters-end", "password: hunterlongword", "hunterlongword"),
    leak(
        "azure-storage-connection-string",
        "DefaultEndpointsProtocol=https;AccountName=acmelogs;"
        f"AccountKey={AZURE_ACCOUNT_KEY};EndpointSuffix=core.windows.net",
        AZURE_ACCOUNT_KEY,
    ),
    leak("azure-account-key-alone", f"AccountKey={AZURE_ACCOUNT_KEY}", AZURE_ACCOUNT_KEY),
    leak("huggingface-token", f"export HF_TOKEN={HF_TOKEN}", HF_TOKEN),
    leak("huggingface-token-in-code", f'login(token="{HF_TOKEN}")', HF_TOKEN),
    leak("pem-body-without-begin", "\n".join(RSA_BODY) + "\n-----END RSA PRIVATE KEY-----\n", *RSA_BODY),
    leak("pem-body-without-either-end", "here is the key:\n" + "\n".join(RSA_BODY) + "\nthanks", *RSA_BODY),
    leak(
        "pem-body-from-the-middle-with-end",
        "\n".join(RSA_BODY[5:]) + "\n-----END RSA PRIVATE KEY-----",
        *RSA_BODY[5:],
    ),
    leak("pem-first-line-only", f"it starts with\n{RSA_BODY[0]}\nand the rest is on my laptop", RSA_BODY[0]),
    leak("pkcs8-body-on-one-line", f"SIGNING_KEY_B64={PKCS8_ONE_LINE}\n", PKCS8_ONE_LINE),
    leak("pkcs8-body-without-begin", "\n".join(_body(PKCS8_PEM)) + "\n", *_body(PKCS8_PEM)),
    leak("ec-body-without-begin", "\n".join(_body(EC_PEM)), *_body(EC_PEM)),
    leak("ed25519-body-without-begin", "\n".join(_body(ED25519_PEM)), *_body(ED25519_PEM)),
    # Whole keys and the long-known shapes.
    leak("rsa-private-key", f"key:\n{RSA_PEM}\nthanks", *RSA_BODY),
    leak("openssh-private-key", OPENSSH_PEM, *_body(OPENSSH_PEM)),
    leak("pem-in-json-string", json.dumps({"key": PKCS8_PEM}), *_body(PKCS8_PEM)),
    leak("aws-labelled-secret", f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
    leak("aws-env-secret", f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET),
    leak("aws-loosely-named-secret", f"my aws prod pw is {AWS_SECRET} ok", AWS_SECRET),
    leak("aws-session-key-id", f"AWS_ACCESS_KEY_ID={AWS_SESSION_KEY_ID}", AWS_SESSION_KEY_ID),
    leak("anthropic-key", "sk-" + "ant-api03-" + rand(ALNUM, 80) + "AA", "sk-" + "ant-api03-"),
    leak("openai-project-key", "OPENAI_API_KEY=sk-" + "proj-" + rand(ALNUM, 48), "sk-" + "proj-"),
    leak("github-pat", "git clone https://" + "ghp" + "_" + rand(ALNUM, 36) + "@github.com/acme/x", "ghp" + "_"),
    leak("gitlab-pat", "GITLAB_TOKEN=" + "glpat-" + rand(ALNUM, 20), "glpat-"),
    leak(
        "pypi-token", "twine upload -u __token__ -p " + "pypi-AgEIcHlwaS5vcmc" + rand(ALNUM, 60), "pypi-AgEIcHlwaS5vcmc"
    ),
    leak("npm-token", f"echo {NPM_TOKEN} | npm login", NPM_TOKEN),
    leak("slack-bot-token", "xox" + "b-" + "1234567890-0987654321-" + rand(ALNUM, 24), "xox" + "b-"),
    leak("slack-webhook", f"curl -X POST {SLACK_WEBHOOK}", SLACK_WEBHOOK),
    leak("stripe-live-key", "sk" + "_live_" + rand(ALNUM, 24), "sk" + "_live_"),
    leak("google-api-key", "?key=" + "AI" + "za" + rand(ALNUM, 35), "AI" + "za"),
    leak(
        "gcp-service-account-json",
        json.dumps({"type": "service_account", "private_key_id": "ab12", "private_key": PKCS8_PEM}),
        *_body(PKCS8_PEM),
    ),
    leak(
        "jwt", "id_token=" + "eyJhbGciOiJSUzI1NiJ9." + rand(ALNUM, 60) + "." + rand(ALNUM, 43), "eyJhbGciOiJSUzI1NiJ9"
    ),
    leak("bearer-header", f"curl -H 'Authorization: Bearer {BEARER}' https://api.example.com", BEARER),
    leak("basic-auth-header", "Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    leak("postgres-url-password", "DATABASE_URL=postgres://app:Sup3r-s3cret@db:5432/app", "Sup3r-s3cret"),
    leak("pgpassword-env", "PGPASSWORD=Tr0ub4dor&3 psql -h db", "Tr0ub4dor&3"),
    leak("json-password", '{"username": "ada", "password": "correct horse battery"}', "correct horse battery"),
    leak(
        "azure-sas-url", f"https://acme.blob.core.windows.net/c/f.txt?sv=2022-11-02&sig={SAS_SIGNATURE}", SAS_SIGNATURE
    ),
    leak(
        "azure-service-bus",
        f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={SERVICE_BUS_KEY}",
        SERVICE_BUS_KEY,
    ),
    leak("sendgrid-key", "SENDGRID=" + "SG." + rand(ALNUM, 22) + "." + rand(ALNUM, 43), "SG."),
    leak("keyword-auth-key-quoted", 'auth_key = "' + "Zq8" + rand(ALNUM, 21) + '"', "Zq8"),
    leak("high-entropy-quoted-value", f'SIGNING_SALT: "{SALT}"', SALT),
    leak("high-entropy-assigned-value", f"cookie_salt={SALT}\n", SALT),
]

MUST_KEEP: list[tuple[str, str]] = [
    ("python-signature", "def login(user: str, password: str) -> Token:\n    return auth.check(password=password)"),
    ("python-settings", "api_key = settings.anthropic_api_key\ntoken = get_token()\nmax_tokens = 4096"),
    ("pydantic-model", "class Login(BaseModel):\n    user: str\n    password: SecretStr\n"),
    ("uuid", "request 3f2504e0-4f89-41d3-9a6d-0c5a6f0e7a11 failed; retry with id 6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ("git-sha", "commit 9fceb02d0ae598e95dc970b74767f19372d61af8\nAuthor: Ada <ada@example.com>"),
    ("git-sha-in-json", '{"sha": "9fceb02d0ae598e95dc970b74767f19372d61af8", "ref": "refs/heads/main"}'),
    ("sha256-in-json", '{"system_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}'),
    ("prose-password-reset", "Reset your password: click the link below and choose a new one."),
    ("prose-keys", "Set ANTHROPIC_API_KEY in your environment, then run claude. Never paste a key in chat."),
    ("yaml-template", "db:\n  password: ${DB_PASSWORD}\n  token: '{{ vault_token }}'\n"),
    ("yaml-required", "password: required\npassphrase: optional\n"),
    ("terraform", 'variable "anthropic_api_key_version" {\n  default = "latest"\n}'),
    ("code-constants", 'GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"\nCOUNT_TOKENS = "count-tokens"'),
    ("env-non-secrets", "MAX_TOKENS=4096\nPWD=/home/ada/src\nBYPASS_CACHE=1\nPASSWORD_MIN_LENGTH=12\n"),
    ("anthropic-ids", '{"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "tool_use_id": "toolu_01A09q90qw90lq917835lq9"}'),
    ("npm-integrity", '"integrity": "sha512-' + rand(B64, 86) + '=="'),
    ("css-classes", '<div class="sk-fading-circle sk-circle1 spinner-border">loading</div>'),
    ("long-identifiers", "test_capture_over_the_cap_keeps_newest_message_then_system_then_recent_history()"),
    ("model-request", '{"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024, "stream": true}'),
    ("sql", "SELECT user_email, SUM(cost_usd) FROM requests WHERE timestamp >= @start GROUP BY 1"),
    ("shell", "git log --oneline | head -5 && npm ci && pytest -q tests/gateway"),
    ("certificate", _certificate()),
    (
        "public-key",
        RSA_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ),
    ("pgp-signature", "-----BEGIN PGP SIGNATURE-----\n" + "\n".join(PGP_LINES) + "\n-----END PGP SIGNATURE-----"),
    ("ssh-public-key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ada@laptop"),
    ("path", 'open("/projects/123456789/locations/us-central1/services/claude-gateway/config.yaml")'),
    ("numbers", "p50 12.5 ms, p99 41.0 ms over 10000 requests; 0.3 ms a request; port 8080"),
    ("placeholder-key-docs", 'export AWS_SECRET_ACCESS_KEY="<your secret key>"\napi_key: "${API_KEY}"'),
    ("base64-short", 'icon = "iVBORw0KGgo="'),
]


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def _redacted(redactor: Redactor, sample: Leak) -> bool:
    out, counts = redactor.redact(sample.text)
    return bool(counts) and not any(secret in out for secret in sample.secrets)


def test_corpus_is_big_enough() -> None:
    assert len(MUST_REDACT) >= 35 and len(MUST_KEEP) >= 25
    assert len({sample.id for sample in MUST_REDACT}) == len(MUST_REDACT)


@pytest.mark.parametrize("sample", MUST_REDACT, ids=[sample.id for sample in MUST_REDACT])
def test_every_secret_in_the_corpus_is_redacted(redactor: Redactor, sample: Leak) -> None:
    out, counts = redactor.redact(sample.text)
    assert counts, sample.text
    for secret in sample.secrets:
        assert secret not in out
    assert redactor.redact(out) == (out, {})


@pytest.mark.parametrize(("name", "text"), MUST_KEEP, ids=[name for name, _ in MUST_KEEP])
def test_ordinary_text_is_left_alone(redactor: Redactor, name: str, text: str) -> None:
    assert redactor.redact(text) == (text, {})


def test_corpus_rates(redactor: Redactor) -> None:
    """The numbers the docs quote: all must-redact samples redacted, no must-keep sample touched."""
    redacted = sum(_redacted(redactor, sample) for sample in MUST_REDACT)
    false_positives = sum(redactor.redact(text)[1] != {} for _, text in MUST_KEEP)
    assert (redacted, len(MUST_REDACT)) == (len(MUST_REDACT), len(MUST_REDACT))
    assert false_positives == 0
