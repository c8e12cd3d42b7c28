#!/usr/bin/env python3
"""Follow lpcmon's event stream with nothing but the Python standard library.

Prints one line per event and one per `gap` (with how many events it missed), and survives a
server restart: when the connection drops it reconnects with `Last-Event-ID`, so the server
sends only what came after the last event seen (and a `gap` if some of it is gone).

    examples/follow.py [--url http://127.0.0.1:7878] [--kind process.exec] [--max-events N]
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("LPCMON_URL", "http://127.0.0.1:7878"))
    p.add_argument("--token", default=os.environ.get("LPCMON_TOKEN"), help="bearer token, if the server needs one")
    p.add_argument("--kind", action="append", default=[], help="only these kinds (repeatable)")
    p.add_argument("--last-event-id", type=int, default=None, help="start after this event id")
    p.add_argument("--max-events", type=int, default=0, help="exit after this many events (0: never)")
    p.add_argument("--retry", type=float, default=1.0, help="seconds between reconnects")
    p.add_argument("--give-up", type=float, default=60.0, help="exit if the server is gone this long")
    return p.parse_args()


def describe(kind, data):
    process = data.get("process", {})
    what = process.get("executable") or process.get("command_line") or process.get("name") or ""
    return f"event {data.get('id')} {kind} pid={process.get('pid', '-')} {what[:60]}".rstrip()


def stream(args, last_id):
    """Yields (event, id, data) from one connection until it ends."""
    query = urllib.parse.urlencode([("kind", k) for k in args.kind])
    url = args.url.rstrip("/") + "/events/stream" + (f"?{query}" if query else "")
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    if last_id is not None:
        req.add_header("Last-Event-ID", str(last_id))
    if args.token:
        req.add_header("Authorization", f"Bearer {args.token}")
    # Loopback needs no proxy, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        print(f"# connected {url} Last-Event-ID={last_id if last_id is not None else '-'}", flush=True)
        event, ident, data = "message", None, []
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data:
                    yield event, ident, "\n".join(data)
                event, ident, data = "message", None, []
            elif line.startswith(":"):
                continue  # keep-alive comment
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "id":
                    ident = int(value) if value.isdigit() else None
                elif name == "data":
                    data.append(value)


def main():
    args = parse_args()
    last_id = args.last_event_id
    seen = 0
    down_since = None
    while True:
        try:
            for event, ident, payload in stream(args, last_id):
                down_since = None
                body = json.loads(payload)
                # An event's SSE id is its event id; a gap's is the last id it covers, so
                # resuming after it does not report the hole again.
                if ident is not None:
                    last_id = ident
                if event == "gap":
                    print(f"gap missed={body.get('missed')} reason={body.get('reason')}", flush=True)
                    continue
                print(describe(event, body), flush=True)
                seen += 1
                if args.max_events and seen >= args.max_events:
                    return 0
            reason = "the server closed the stream"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        except KeyboardInterrupt:
            return 0
        now = time.monotonic()
        down_since = down_since or now
        if now - down_since > args.give_up:
            print(f"# giving up: {reason}", file=sys.stderr)
            return 1
        print(f"# disconnected ({reason}); retrying in {args.retry:g} s", flush=True)
        time.sleep(args.retry)


if __name__ == "__main__":
    sys.exit(main())
