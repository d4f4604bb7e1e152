"""claude-shim's real forwarding app in front of a local gateway, with a fixed ID token instead of Google sign-in.

This is `claude-shim serve` (same app, same uvicorn server and access log) with one substitution: the token
provider hands out a static token, since Google's token endpoint is not reachable here. The shim adds it as
`Authorization: Bearer`, which the gateway drops as it would after IAP. IAP itself (Google's hop between the
shim and the gateway) is not in the loop: the load generator's `x-goog-iap-jwt-assertion` header passes
through the shim unchanged and stands in for the assertion IAP would add.

Run: python -m bench.shim --port 9200 --gateway http://127.0.0.1:9300 --secret SECRET
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from local_shim.auth import IdToken, TokenProvider
from local_shim.config import ShimSettings
from local_shim.server import bind_loopback, create_app, make_server

AUDIENCE = "bench.apps.googleusercontent.com"


class StaticTokenProvider(TokenProvider):
    """Always the same (unsigned, never checked) ID token, good for a day."""

    def __init__(self) -> None:
        super().__init__(audience=AUDIENCE, refresh_margin=300.0)

    async def _mint(self) -> IdToken:
        return IdToken(value="bench-id-token", audience=AUDIENCE, expires_at=time.time() + 86400, email="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    settings = ShimSettings(gateway_url=args.gateway, oauth_client_id=AUDIENCE)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # As `claude-shim serve` sets up its log: INFO, uvicorn's access lines included.
    for name in ("local_shim", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("uvicorn.access").propagate = True
    sock = bind_loopback("127.0.0.1", args.port)
    app = create_app(settings, port=args.port, secret=args.secret, provider=StaticTokenProvider())
    make_server(app, access_log=True).run(sockets=[sock])


if __name__ == "__main__":
    main()
