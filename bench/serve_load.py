"""Benchmark: `r1rm judge --serve` under concurrent clients against a loop that sends one request at a time.

Same model, same request (a 56x56 image and a question, greedy, max_tokens tokens), same engine settings.
The baseline builds the same engine in this process (make_engine with the server's config) and calls
`engine.generate` on one request at a time, as a server without batching would. The server runs as
`r1rm judge --serve` (a subprocess, port 0) and is driven over HTTP by 1, 8 and 64 concurrent clients
(one keep-alive connection each, a minimal asyncio HTTP/1.1 client), each sending requests back to back for `--seconds`. Prints and writes
requests/s and p50 / p99 latency per level, and the speed-up at the highest level over the loop
(target: >= 4x at 64 clients on the tiny model on CPU; recorded, not asserted).

    python bench/serve_load.py [--model PATH] [--seconds 10] [--max-tokens 16] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def png_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def baseline(overrides: list[str], body: dict, seconds: float) -> dict:
    """engine.generate on one request at a time, back to back, for `seconds`."""
    from r1rm.config import load_config
    from r1rm.engines import make_engine
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.serving import to_chat_messages

    cfg = load_config(None, overrides)
    engine = make_engine(cfg)
    messages = to_chat_messages(body["messages"], max_pixels=cfg.model.max_pixels, max_request_pixels=1 << 30)
    params = SamplingParams(max_new_tokens=body["max_tokens"], temperature=0.0)
    engine.generate([Request(messages)], params)  # warm-up
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        engine.generate([Request(messages)], params)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    engine.close()
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50_s": percentile(latencies, 0.5),
            "p99_s": percentile(latencies, 0.99)}


async def drive(url: str, body: dict, clients: int, seconds: float) -> dict:
    """`clients` keep-alive connections, each sending `body` back to back for `seconds`. A minimal HTTP/1.1
    client on asyncio streams: httpx's connection pool, not the server, limited an earlier version of this
    benchmark at 64 connections (239 vs 1808 requests/s against the same app over an instant engine)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    data = json.dumps(body).encode()
    request = (f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    latencies: list[float] = []
    failures = 0

    async def client(stop: float) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    latencies.append(time.perf_counter() - t)
                else:
                    failures += 1
        finally:
            writer.close()

    await client(time.perf_counter())  # one warm-up request
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client(start + seconds) for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "failures": failures, "rps": len(latencies) / wall,
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint (default: a fresh tiny model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--out", default="out/bench/serve_load.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="r1rm-serve-bench-"))
    model = args.model
    if model is None:
        from r1rm.models.tiny import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny", seed=0))
    overrides = [f"model.path={model}", f"output_dir={tmp / 'srv'}", f"runtime.device={args.device}",
                 "runtime.progress=false", f"engine.batch_size={args.batch_size}", "judge.served_model_name=bench"]
    body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url()}},
                                                      {"type": "text", "text": "Which response is better? 1 or 2."}]}]}

    loop = baseline(overrides, body, args.seconds)
    print(f"loop (one request at a time): {loop['rps']:.2f} req/s, p50 {loop['p50_s'] * 1000:.0f} ms, "
          f"p99 {loop['p99_s'] * 1000:.0f} ms", flush=True)

    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "r1rm.cli", "judge", "--serve", *overrides, "judge.port=0"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://[^ ]+/v1)", line)
        if not m:
            raise SystemExit(f"server did not start: {line}{(tmp / 'server.log').read_text()[-2000:]}")
        levels = []
        for clients in (int(x) for x in args.levels.split(",")):
            r = asyncio.run(drive(m.group(1), body, clients, args.seconds))
            r["speedup_vs_loop"] = r["rps"] / loop["rps"]
            levels.append(r)
            print(f"server, {clients:>3} clients: {r['rps']:.2f} req/s ({r['speedup_vs_loop']:.1f}x the loop), "
                  f"p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms, {r['failures']} failures", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "model": model, "device": args.device, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
              "seconds_per_level": args.seconds, "loop": loop, "server": levels,
              "target": ">= 4x the loop's requests/s at 64 clients (tiny model, CPU)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
