"""The HTTP floor of `benchmarks.serve_load`: uvicorn answering every request with one body.

    .venv/bin/python -m benchmarks.serve_floor --port P --body FILE

The same server stack as `derm serve` with one worker (uvicorn, with the uvloop event loop
and httptools parser it picks when they are installed), with no framework, no request
parsing, no Redis and no JSON encoding: a plain ASGI app that sends the bytes of FILE (the
benchmark writes one real `/embeddings` answer there). What a request costs here is what
HTTP on loopback costs for an answer of that size, and what the load generator costs: its
throughput is the most that client can measure.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def constant_app(body: bytes):
    """An ASGI app answering 200 with `body` (application/json) to every HTTP request,
    after reading the request's body to its end (as a real endpoint has to)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan: nothing to start
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", type=Path, required=True, help="file holding the answer's bytes")
    a = p.parse_args()
    app = constant_app(a.body.read_bytes())
    uvicorn.run(
        app, host="127.0.0.1", port=a.port, access_log=False, log_level="warning", lifespan="off"
    )


if __name__ == "__main__":
    main()
