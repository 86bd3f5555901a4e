"""``make run``'s console: ``taskd api`` on 127.0.0.1 beside the daemon, and a sign-in link.

``python -m taskd.testing.dev_console --port 8080 [--wait-for URL]`` waits until ``URL``
answers (the daemon's ``/readyz``: the embedded database is up and migrated, so the API joins
it instead of racing to start it), starts ``taskd api`` on ``127.0.0.1:PORT``, waits for its
``/healthz`` and prints a link that signs in to the console with a development admin token
valid for ``--ttl`` (30 minutes). Without ``TASKD_API__JWT_SECRET`` a random secret is made for
this run (the link's token is minted with ``taskd api token`` under it). SIGINT or SIGTERM
stops the API.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from types import FrameType
from urllib.error import URLError
from urllib.request import urlopen

DEV_USER = "dev"


def _answers(url: str) -> bool:
    try:
        with urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 300)
    except (URLError, OSError):
        return False


def _wait(url: str, within: float, alive: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _answers(url):
            return True
        if alive is not None and alive.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--wait-for", default=None,
                        help="a URL that answers once the daemon is ready")
    parser.add_argument("--ttl", type=float, default=1800.0, help="the link's token, seconds")
    parser.add_argument("--within", type=float, default=120.0,
                        help="seconds to wait for the daemon, then for the API")
    args = parser.parse_args(argv)
    env = dict(os.environ, TASKD_API__ADDR=f"127.0.0.1:{args.port}")
    env.setdefault("TASKD_API__JWT_SECRET", secrets.token_hex(32))
    if args.wait_for and not _wait(args.wait_for, args.within):
        print(f"console: the daemon did not answer {args.wait_for}; no API started",
              file=sys.stderr)
        return 1
    api = subprocess.Popen([sys.executable, "-m", "taskd", "api"], env=env)

    def stop(signum: int, frame: FrameType | None) -> None:
        api.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    base = f"http://127.0.0.1:{args.port}"
    if _wait(f"{base}/healthz", args.within, api):
        # Minted as an operator would (`taskd api token`), with the API's own settings.
        token = subprocess.run(
            [sys.executable, "-m", "taskd", "api", "token", "--user", DEV_USER, "--admin",
             "--ttl", f"{int(args.ttl)}s"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
        print(f"\nconsole: open {base}/console/login?token={token}\n"
              f"         (signs in as {DEV_USER!r}, admin, for {args.ttl / 60:g} minutes)\n",
              flush=True)
    else:
        print(f"console: taskd api did not answer on {base}", file=sys.stderr)
        api.terminate()
    try:
        return api.wait()
    except KeyboardInterrupt:
        api.terminate()
        return api.wait()


if __name__ == "__main__":
    sys.exit(main())
