"""Baseline (c): what a naive bridge does: aiohttp → aiokafka, no signature, no parsing, no dedup.

Same producer settings as the bridge (idempotent, acks=all, linger 5 ms, 256 KiB batches), same
event loop (uvloop) and no access log, so the difference to the bridge is the bridge's own work.

  python -m bench.baselines.naive --port P --brokers B --topic T
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer

from bench.baselines.serving import serve_until_stopped


async def serve(port: int, brokers: str, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=262_144,
    )
    await producer.start()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        ack = await producer.send(topic, body)
        await ack
        return web.json_response({"published": 1})

    await serve_until_stopped(port, forward)
    await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.baselines.naive")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.brokers, args.topic))


if __name__ == "__main__":
    main()
