"""Read the top 10 of a symbol from Redis, then follow its updates (what the top10 service writes).

    python examples/top10.py XBTUSD [--redis-url URL] [--prefix bitmex] [--updates N] [--seconds S]

The key `<prefix>:top10:{SYM}` is a hash (`bids`, `asks` as JSON `[[price, size], ...]` best first,
`timestamp`, `status`, `reason`, ...) and a pub/sub channel of the same name announcing every write.
Subscribe first and read the hash second: an update that lands in between is then not missed.
Settings come from the flags, else from REDIS_URL and KEY_PREFIX, else the defaults of `docker compose`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import cast

import redis


def describe(fields: dict[str, str]) -> str:
    bids, asks = json.loads(fields.get("bids") or "[]"), json.loads(fields.get("asks") or "[]")
    bid = f"{bids[0][0]} x {bids[0][1]}" if bids else "none"
    ask = f"{asks[0][0]} x {asks[0][1]}" if asks else "none"
    # A cache written before the status fields existed has none; anything but "live" deserves a look.
    status = fields.get("status") or "unknown"
    reason = f" ({fields['reason']})" if fields.get("reason") else ""
    return f"bid {bid}  ask {ask}  levels {len(bids)}/{len(asks)}  at {fields.get('timestamp')}  {status}{reason}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("symbol")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--prefix", default=os.environ.get("KEY_PREFIX", "bitmex"))
    parser.add_argument("--updates", type=int, default=0, help="stop after N updates (0: follow until Ctrl-C)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after S seconds (0: no limit)")
    args = parser.parse_args()
    key = f"{args.prefix}:top10:{{{args.symbol}}}"
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(key)

    fields = cast(dict[str, str], client.hgetall(key))
    if not fields:
        print(f"{key}: no snapshot yet (is top10 running, and does the venue send orderBook10?)")
    else:
        print(f"{args.symbol} now: {describe(fields)}")

    received = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while not args.updates or received < args.updates:
            if deadline is not None and time.monotonic() >= deadline:
                break
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            # The announcement carries the snapshot itself (symbol, bids, asks, timestamp, stream_id);
            # re-reading the hash gives the status fields too, and is never older than the announcement.
            received += 1
            print(f"{args.symbol} update {received}: {describe(cast(dict[str, str], client.hgetall(key)))}")
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
    print(f"{received} updates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
