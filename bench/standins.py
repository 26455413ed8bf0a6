"""The two servers bench/floors.py's `enqueue` section measures kitty-coreml's submit against, each run
under the uvicorn settings of `kitty-coreml serve` (one process, log level warning, no access log,
limit_concurrency 1024) and announcing itself on stderr as serve does ("listening on http://HOST:PORT"):

* noop: POST /api/images/generate answers a fixed queued job at once: the HTTP floor.
* kitty: a stand-in of KITTY's submit, written from services/images_service/main.py at
  Jmi2020/KITT@21e1310 (read, not copied): a plain `def` route taking KITTY's body model
  (prompt, width 512..2048, height, steps 10..150, cfg 1..20, seed, model, refiner) and making one RQ
  enqueue on the queue `images` (job timeout 15 min, results kept 24 h, failures 1 h), answering
  {job_id, status: "queued"}.

    python bench/standins.py noop|kitty [REDIS_URL]
"""

from __future__ import annotations

import socket
import sys
from typing import Optional

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field


class KittyBody(BaseModel):
    prompt: str
    width: int = Field(1024, ge=512, le=2048)
    height: int = Field(1024, ge=512, le=2048)
    steps: int = Field(30, ge=10, le=150)
    cfg: float = Field(7.0, ge=1.0, le=20.0)
    seed: Optional[int] = None
    model: str = "sdxl_base"
    refiner: Optional[str] = None


KITTY_JOB = "worker_diffusers.run_diffusers_job"
"""What KITTY's jobs name (its default engine's function), by import path: RQ stores only the name, and no
worker runs these jobs here."""


def noop_app() -> FastAPI:
    app = FastAPI()

    @app.post("/api/images/generate")
    async def generate() -> dict[str, str]:
        return {"job_id": "0" * 32, "status": "queued"}

    return app


def kitty_app(redis_url: str) -> FastAPI:
    from redis import Redis
    from rq import Queue

    queue = Queue("images", connection=Redis.from_url(redis_url))
    app = FastAPI()

    @app.post("/api/images/generate")
    def generate(body: KittyBody) -> dict[str, str]:
        job = queue.enqueue(KITTY_JOB, body.model_dump(), job_timeout="15m", result_ttl=86400, failure_ttl=3600)
        return {"job_id": job.id, "status": "queued"}

    return app


def main() -> None:
    kind, *rest = sys.argv[1:]
    app = noop_app() if kind == "noop" else kitty_app(rest[0])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sys.stderr.write(f"listening on http://127.0.0.1:{sock.getsockname()[1]}\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, limit_concurrency=1024,
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
