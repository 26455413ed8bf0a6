"""A stand-in of KITTY's gateway images routes (services/gateway/src/gateway/routes/images.py at
Jmi2020/KITT@21e1310), written from its behaviour: /api/images/* proxied to IMAGES_BASE as JSON, any
upstream error (an HTTP error status included) answered 500 with the text.

Run: python -m tests.kitty.gateway PORT IMAGES_BASE
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request


def create(images_base: str) -> FastAPI:
    app = FastAPI()

    async def forward(method: str, path: str, **kwargs) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=60.0) as client:
                response = await client.request(method, f"{images_base}/api/images/{path}", **kwargs)
                response.raise_for_status()
                return response.json()
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=500, detail=f"Images service error: {exc}") from None

    @app.post("/api/images/generate")
    async def generate(request: Request):
        return await forward("POST", "generate", json=await request.json())

    @app.get("/api/images/jobs/{job_id}")
    async def job_status(job_id: str):
        return await forward("GET", f"jobs/{job_id}")

    @app.get("/api/images/latest")
    async def latest(limit: int = 36):
        return await forward("GET", "latest", params={"limit": limit})

    @app.post("/api/images/select")
    async def select(request: Request):
        return await forward("POST", "select", json=await request.json())

    @app.get("/api/images/stats")
    async def stats():
        return await forward("GET", "stats")

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    return app


if __name__ == "__main__":
    uvicorn.run(create(sys.argv[2].rstrip("/")), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
