"""``python -m refold_dispatch.sandbox``: serve the sandbox from the command line.

The API key may come from ``--api-key`` or, to keep it out of the process list, ``REFOLD_SANDBOX_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from refold_dispatch.sandbox.config import DEFAULT_API_KEY, DEFAULT_KNOWN_EVENTS, SandboxConfig
from refold_dispatch.sandbox.faults import FaultConfig
from refold_dispatch.sandbox.server import DEFAULT_HOST, DEFAULT_PORT, run_sandbox

API_KEY_ENV = "REFOLD_SANDBOX_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refold_dispatch.sandbox", description="Serve a local stand-in for Refold's API."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", help=f"key clients must send (default: ${API_KEY_ENV} or {DEFAULT_API_KEY})")
    parser.add_argument(
        "--events",
        help="comma-separated event names Refold knows ('*' accepts any); default: "
        + ",".join(sorted(DEFAULT_KNOWN_EVENTS)),
    )
    parser.add_argument(
        "--allow-unknown-accounts", action="store_true", help="accept events for accounts never upserted"
    )
    limits = parser.add_argument_group("rate limit")
    limits.add_argument("--rate-limit", type=float, default=SandboxConfig().rate_limit, help="requests/s")
    limits.add_argument("--rate-burst", type=int, default=SandboxConfig().rate_burst)
    limits.add_argument("--no-rate-limit", action="store_true", help="disable the limiter")
    limits.add_argument("--no-retry-after", action="store_true", help="send 429s without Retry-After")
    faults = parser.add_argument_group("faults (probabilities 0..1)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="answer 500/502/503 unprocessed")
    faults.add_argument("--rate-429", type=float, default=0.0, help="answer a spurious 429 unprocessed")
    faults.add_argument("--retry-after-429", type=float, default=None, help="Retry-After on spurious 429s")
    faults.add_argument("--hang-rate", type=float, default=0.0, help="sleep, then 504 unprocessed")
    faults.add_argument("--hang-seconds", type=float, default=FaultConfig().hang_seconds)
    faults.add_argument("--slow-rate", type=float, default=0.0, help="sleep, then process")
    faults.add_argument("--slow-seconds", type=float, default=FaultConfig().slow_seconds)
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added to every API request")
    faults.add_argument("--seed", type=int, default=None, help="seed the fault RNG for a repeatable run")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    events = (
        frozenset(name.strip() for name in args.events.split(",") if name.strip())
        if args.events
        else DEFAULT_KNOWN_EVENTS
    )
    return SandboxConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY,
        known_events=events,
        require_known_accounts=not args.allow_unknown_accounts,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        rate_limit_enabled=not args.no_rate_limit,
        retry_after_header=not args.no_retry_after,
        faults=FaultConfig(
            error_rate=args.error_rate,
            rate_429=args.rate_429,
            retry_after_429=args.retry_after_429,
            hang_rate=args.hang_rate,
            hang_seconds=args.hang_seconds,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            latency_ms=args.latency_ms,
            seed=args.seed,
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    # Say where and which environment, never the key.
    print(
        f"Refold sandbox on http://{args.host}:{args.port} ({config.environment} environment); "
        f"admin at /_sandbox/stats",
        file=sys.stderr,
    )
    run_sandbox(config, args.host, args.port)


if __name__ == "__main__":
    main()
