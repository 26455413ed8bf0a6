"""Stand-ins for KITTY's own clients, written from their code at Jmi2020/KITT@21e1310 (not copied): what
each sends, how it polls, and which answers make it stop. Each returns what its user would see.

- kitty-cli (services/cli/src/cli/main.py): generate-image (always width, height, steps, cfg, model;
  seed and refiner only when given; --wait polls /jobs/{id}, stops only on finished or failed, prints
  "Unknown status" and keeps polling on any other word), image-status, list-images, select-image N
  (lists latest with limit 50 and selects item N), and the shell's /generate (generate-image with the
  defaults and --wait).
- the UI's Generate tab (services/ui/src/pages/MediaHub/tabs/Generate.tsx): the same body from its form,
  `refiner: "sdxl_refiner"` only with model sdxl_base and the box ticked, a seed only when typed (parseInt),
  polls up to 60 times and then reports "Generation timed out".
- the UI's create_image tool (services/ui/src/lib/kitty-functions.ts): {prompt, size, style}.

KITTY polls every 2 s; here `poll_s` is short and the attempt budget scaled so the wall-clock budget is
KITTY's (the UI's 60 x 2 s). A client that would loop forever gives up at that budget and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

KITTY_POLL_S = 2.0
UI_MAX_ATTEMPTS = 60


@dataclass
class Seen:
    """What a KITTY user sees: the exit code (CLI) and the lines printed or shown."""

    code: int = 0
    lines: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def say(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class KittyCli:
    """kitty-cli's image commands against IMAGES_BASE (the gateway or the images service itself)."""

    def __init__(self, images_base: str, *, poll_s: float = 0.05):
        self.base = images_base.rstrip("/")
        self.poll_s = poll_s
        self.budget_polls = int(UI_MAX_ATTEMPTS * KITTY_POLL_S / poll_s)
        self.last_job_id: str | None = None

    def _call(self, seen: Seen, method: str, endpoint: str, **kwargs) -> dict[str, Any] | None:
        try:
            response = httpx.request(method, f"{self.base}/api/images/{endpoint}", timeout=30, **kwargs)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPStatusError as exc:
            seen.say(f"Images API error {exc.response.status_code}: {exc.response.text}")
        except httpx.RequestError as exc:
            seen.say(f"Images API request failed: {exc}")
        seen.code = 1
        return None

    def generate_image(self, prompt: list[str], *, width: int = 1024, height: int = 1024, steps: int = 30,
                       cfg: float = 7.0, seed: int | None = None, model: str = "sdxl_base",
                       refiner: str | None = None, wait: bool = False) -> Seen:
        seen = Seen()
        text = " ".join(prompt)
        payload: dict[str, Any] = {"prompt": text, "width": width, "height": height, "steps": steps, "cfg": cfg,
                                   "model": model}
        if seed is not None:
            payload["seed"] = seed
        if refiner:
            payload["refiner"] = refiner
        seen.data["payload"] = payload
        result = self._call(seen, "POST", "generate", json=payload)
        if result is None:
            return seen
        job_id = result.get("job_id")
        if not job_id:
            seen.say("Failed to get job ID from server")
            seen.code = 1
            return seen
        seen.data["job_id"] = self.last_job_id = job_id
        seen.say(f"Job queued: {job_id}")
        if not wait:
            seen.say(f"Check status with: kitty-cli image-status {job_id}")
            return seen
        for _ in range(self.budget_polls):
            status_data = self._call(seen, "GET", f"jobs/{job_id}")
            if status_data is None:
                return seen
            status = status_data.get("status")
            seen.statuses.append(status)
            if status == "finished":
                seen.data["png_key"] = (status_data.get("result") or {}).get("png_key")
                seen.say("Image generated successfully!")
                seen.say(f"S3 Key: {seen.data['png_key']}")
                return seen
            if status == "failed":
                seen.say(f"Generation failed: {status_data.get('error', 'Unknown error')}")
                seen.code = 1
                return seen
            if status not in ("queued", "started"):
                seen.say(f"Unknown status: {status}")
            time.sleep(self.poll_s)
        seen.say("(kitty-cli would still be polling: it never stops on its own)")
        seen.code = 124
        return seen

    def shell_generate(self, line: str) -> Seen:
        """The shell's `/generate <prompt>`: generate-image with the defaults, waiting; errors end quietly."""
        return self.generate_image(line.split(), width=1024, height=1024, steps=30, cfg=7.0, seed=None,
                                   model="sdxl_base", refiner=None, wait=True)

    def image_status(self, job_id: str) -> Seen:
        seen = Seen()
        status_data = self._call(seen, "GET", f"jobs/{job_id}")
        if status_data is None:
            return seen
        status = status_data.get("status")
        seen.say(f"Job {job_id}: {status}")
        if status == "finished":
            result = status_data.get("result", {})
            seen.say(f"PNG: {result.get('png_key')}")
            seen.say(f"Metadata: {result.get('meta_key')}")
        elif status == "failed":
            seen.say(f"Error: {status_data.get('error', 'Unknown error')}")
        elif status in ("queued", "started"):
            seen.say("Generation in progress...")
        return seen

    def list_images(self, limit: int = 20) -> Seen:
        seen = Seen()
        data = self._call(seen, "GET", "latest", params={"limit": limit})
        if data is None:
            return seen
        items = data.get("items", [])
        if not items:
            seen.say("No images found.")
            return seen
        for index, item in enumerate(items, 1):
            filename = item["key"].split("/")[-1]
            seen.say(f"{index} {filename} {item['size'] / 1024:.1f} KB {item['last_modified'][:19]}")
        seen.data["items"] = items
        return seen

    def select_image(self, index: int) -> Seen:
        seen = Seen()
        data = self._call(seen, "GET", "latest", params={"limit": 50})
        if data is None:
            return seen
        items = data.get("items", [])
        if not items:
            seen.say("No images found.")
            seen.code = 1
            return seen
        if index < 1 or index > len(items):
            seen.say(f"Index {index} out of range (1-{len(items)})")
            seen.code = 1
            return seen
        key = items[index - 1]["key"]
        selected = self._call(seen, "POST", "select", json={"key": key})
        if selected is None:
            return seen
        image_ref = selected.get("imageRef", {})
        seen.data.update(key=key, image_ref=image_ref)
        seen.say(f"Image selected: {key}")
        seen.say(f"Download URL: {image_ref.get('downloadUrl')}")
        seen.say(f"Storage URI: {image_ref.get('storageUri')}")
        return seen


class KittyUi:
    """The UI's Generate tab and its create_image tool, as the browser sends them (same origin as API_BASE)."""

    def __init__(self, api_base: str, *, poll_s: float = 0.05):
        self.base = api_base.rstrip("/")
        self.poll_s = poll_s
        self.max_attempts = int(UI_MAX_ATTEMPTS * KITTY_POLL_S / poll_s)

    def generate(self, prompt: str, *, size: str = "1024x1024", steps: int = 30, cfg: float = 7.0,
                 seed: str = "", model: str = "sdxl_base", use_refiner: bool = False) -> Seen:
        seen = Seen()
        width, height = (int(n) for n in size.split("x"))
        payload: dict[str, Any] = {"prompt": prompt.strip(), "width": width, "height": height, "steps": steps,
                                   "cfg": cfg, "model": model}
        if seed.strip():
            payload["seed"] = int(seed)
        if use_refiner and model == "sdxl_base":
            payload["refiner"] = "sdxl_refiner"
        seen.data["payload"] = payload
        response = httpx.post(f"{self.base}/api/images/generate", json=payload, timeout=30)
        if not response.is_success:
            seen.say(f"Generation failed ({response.status_code})")
            return seen
        job_id = response.json().get("job_id")
        if not job_id:
            seen.say("No job ID returned")
            return seen
        seen.data["job_id"] = job_id
        for _ in range(self.max_attempts):
            answer = httpx.get(f"{self.base}/api/images/jobs/{job_id}", timeout=30)
            if not answer.is_success:
                seen.say(f"Status check failed ({answer.status_code})")
                return seen
            status_data = answer.json()
            seen.statuses.append(status_data.get("status"))
            if status_data.get("status") == "finished" and status_data.get("result"):
                seen.data["png_key"] = status_data["result"]["png_key"]
                seen.say("Image generated successfully!")
                return seen
            if status_data.get("status") == "failed":
                seen.say(status_data.get("error") or "Generation failed")
                return seen
            time.sleep(self.poll_s)
        seen.say("Generation timed out")
        return seen

    def recent(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/api/images/latest?limit=20", timeout=30).json().get("items") or []

    def create_image_tool(self, prompt: str, size: str | None = None, style: str | None = None) -> dict[str, Any]:
        body = {"prompt": prompt, "size": size or "square", "style": style or "realistic"}
        return httpx.post(f"{self.base}/api/images/generate", json=body, timeout=30).json()
