"""Images per second publishing 200 PNGs of 512x512 to a local `rclone serve s3`: one at a time
(publish_item in a loop) versus the concurrent path (publish_pending's thread pool). Prints one JSON object.

Run: .venv/bin/python bench/publish.py [--count 200] [--workers 8]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitty_coreml.storage.base import new_key  # noqa: E402
from kitty_coreml.storage.outbox import pending, publish_item, publish_pending, stage  # noqa: E402
from kitty_coreml.storage.s3 import S3Store  # noqa: E402
from tests.s3server import S3Server  # noqa: E402


def noise_png(size: int, seed: int) -> bytes:
    """A 512x512 PNG of noise: about as large as a generated image once compressed."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pngs = [noise_png(512, seed) for seed in range(8)]
        with S3Server(root / "s3") as server:
            results = {}
            for mode in ("sequential", "concurrent"):
                outbox = root / mode
                for index in range(args.count):
                    stage(outbox, new_key("images/"), pngs[index % len(pngs)], {"index": index})
                store = S3Store(bucket=server.create_bucket(), endpoint_url=server.endpoint,
                                access_key=server.access_key, secret_key=server.secret_key)
                items = pending(outbox)
                started = time.perf_counter()
                if mode == "sequential":
                    for item in items:
                        publish_item(store, item)
                else:
                    report = publish_pending(store, outbox, workers=args.workers)
                    assert not report["failed"], report["failed"]
                elapsed = time.perf_counter() - started
                assert not pending(outbox)
                results[mode] = {"seconds": round(elapsed, 3), "images_per_s": round(args.count / elapsed, 1)}
    print(json.dumps({"benchmark": "publish", "images": args.count, "size": "512x512",
                      "png_bytes": len(pngs[0]), "workers": args.workers, **results,
                      "speedup": round(results["sequential"]["seconds"] / results["concurrent"]["seconds"], 2)}))


if __name__ == "__main__":
    main()
