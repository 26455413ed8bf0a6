"""/vision in headless Chromium (Debian's chromium package): the DOM lists the newest images with their
prompts, and the screenshot shows them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .conftest import wait_job


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: apt-get install -y chromium"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--window-size=1000,700", *args, url],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_vision_lists_and_shows_the_newest_images(mock_env, service_factory, tmp_path):
    service = service_factory({**mock_env, "KITTY_COREML_API_KEY": "gallery-key"})
    prompts = ["a teal lighthouse", "an orange fox", "a violet nebula"]
    with service.client(**{"X-API-Key": "gallery-key"}) as client:
        for seed, prompt in enumerate(prompts, start=7):
            job = client.post("/api/images/generate", json={"prompt": prompt, "seed": seed, "width": 256, "height": 256})
            wait_job(client, job.json()["job_id"])
    url = f"{service.url}/vision#key=gallery-key"

    dom = chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="card"') == 3
    for seed, prompt in enumerate(prompts, start=7):
        assert prompt in dom.stdout and f"seed {seed}" in dom.stdout
    assert dom.stdout.count('src="blob:') == 3 and "mock" in dom.stdout

    shot = tmp_path / "vision.png"
    taken = chromium(tmp_path, url, f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from PIL import Image, ImageChops, ImageStat

    with Image.open(shot) as image:
        page = image.convert("RGB")
    background = page.getpixel((page.width - 5, page.height - 5))
    thumbnails = page.crop((16, 70, page.width - 16, 300))  # the first row of cards
    spread = ImageStat.Stat(thumbnails).stddev
    assert max(spread) > 20, f"thumbnail area looks blank: stddev {spread}"
    unlike_background = ImageChops.difference(thumbnails, Image.new("RGB", thumbnails.size, background)).convert("L")
    assert sum(unlike_background.histogram()[1:]) > thumbnails.width * thumbnails.height // 3
