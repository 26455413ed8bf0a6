"""A small stand-in of KITTY's images-service, written from the behaviour of
services/images_service/main.py and worker_diffusers.py at Jmi2020/KITT@21e1310 (not copied): the same
routes, request bounds, answers and status codes. Jobs live in memory and one thread runs them the way
RQ would report them (queued, started, finished, failed); "generating" draws a flat PNG and writes
KITTY's sidecar. A model missing from its models.yaml fails in the worker with a KeyError traceback, as
KITTY's does.

Run: python -m tests.kitty.standin_service PORT ROOT MODEL_NAME...
"""

from __future__ import annotations

import io
import json
import queue
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

BUCKET, PREFIX = "kitty-artifacts", "images/"


class GenerateRequest(BaseModel):
    prompt: str = Field(...)
    width: int = Field(1024, ge=512, le=2048)
    height: int = Field(1024, ge=512, le=2048)
    steps: int = Field(30, ge=10, le=150)
    cfg: float = Field(7.0, ge=1.0, le=20.0)
    seed: Optional[int] = Field(None)
    model: str = Field("sdxl_base")
    refiner: Optional[str] = Field(None)


class SelectRequest(BaseModel):
    key: str = Field(...)


def create(root: Path, models: set[str]) -> FastAPI:
    app = FastAPI()
    jobs: Dict[str, Dict[str, Any]] = {}
    waiting: "queue.Queue[str]" = queue.Queue()

    def draw(params: Dict[str, Any]) -> Dict[str, str]:
        from PIL import Image

        if params["model"] not in models:
            raise KeyError(params["model"])  # KITTY's worker: self.models[name]
        image = Image.new("RGB", (params["width"], params["height"]), (40, 90, 160))
        base = f"{PREFIX}{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (root / PREFIX).mkdir(parents=True, exist_ok=True)
        (root / f"{base}.png").write_bytes(buffer.getvalue())
        meta = {"engine": "diffusers", "request": params, "device": "cpu", "library": "diffusers",
                "timestamp": time.time()}
        (root / f"{base}.json").write_text(json.dumps(meta, indent=2))
        return {"png_key": f"{base}.png", "meta_key": f"{base}.json"}

    def work() -> None:
        while True:
            job_id = waiting.get()
            job = jobs[job_id]
            job["status"] = "started"
            try:
                job["result"] = draw(job["params"])
                job["status"] = "finished"
            except Exception:
                job["exc_info"] = traceback.format_exc()
                job["status"] = "failed"

    threading.Thread(target=work, daemon=True).start()

    @app.get("/")
    def root_info():
        return {"service": "KITTY Images Service", "status": "online", "engine": "diffusers", "queue_name": "images"}

    @app.post("/api/images/generate")
    def generate(req: GenerateRequest):
        job_id = str(uuid.uuid4())
        jobs[job_id] = {"status": "queued", "params": req.model_dump()}
        waiting.put(job_id)
        return {"job_id": job_id, "status": "queued"}

    @app.get("/api/images/jobs/{job_id}")
    def job_status(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"Job not found: {job_id}")
        if job["status"] == "failed":
            return {"status": "failed", "result": None, "error": job["exc_info"][-800:]}
        if job["status"] == "finished":
            return {"status": "finished", "result": job["result"], "error": None}
        return {"status": job["status"], "result": None, "error": None}

    @app.get("/api/images/latest")
    def latest(limit: int = 36):
        from datetime import datetime, timezone

        found = sorted((root / PREFIX).glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        items = [{"key": f"{PREFIX}{p.name}", "size": p.stat().st_size,
                  "last_modified": datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).isoformat()}
                 for p in found[:limit] if p.name.lower().endswith(".png")]
        return {"items": items}

    @app.post("/api/images/select")
    def select(body: SelectRequest):
        if not (root / body.key).is_file():
            raise HTTPException(status_code=404, detail=f"Image not found: {body.key}")
        url = f"http://127.0.0.1:9000/{BUCKET}/{body.key}?X-Amz-Expires=86400"
        return {"imageRef": {"downloadUrl": url, "storageUri": f"s3://{BUCKET}/{body.key}", "key": body.key}}

    @app.get("/api/images/stats")
    def stats():
        counts = {"queued": 0, "started": 0, "finished": 0, "failed": 0}
        for job in list(jobs.values()):
            counts[job["status"]] += 1
        return counts

    return app


if __name__ == "__main__":
    uvicorn.run(create(Path(sys.argv[2]), set(sys.argv[3:])), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning")
