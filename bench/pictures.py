"""What checking and downscaling a picture costs on the request path (memory/pictures.py).

Makes camera-sized JPEGs and a screenshot-like PNG with Pillow (noise, so they do not compress
away), runs `prepare_pictures` on each --repeat times and reports the CPU time per picture, the
bytes sent by the client and the bytes (base64) that go to the model.

  python bench/pictures.py [--repeat 5]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import time

from PIL import Image

from llm_bot_core.config import PictureSettings
from llm_bot_core.memory.pictures import prepare_pictures


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    # Noise at a quarter of the size, upscaled: compresses like a photo, not like a flat colour.
    small = Image.frombytes("RGB", (width // 4, height // 4), os.urandom(width * height * 3 // 16))
    out = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).save(out, format=fmt, quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = PictureSettings(image_max_bytes=50 * 1024 * 1024)
    cases = {
        "phone_12mp_jpeg": (photo(4000, 3000), "image/jpeg"),
        "telegram_photo_1280_jpeg": (photo(1280, 960), "image/jpeg"),
        "screenshot_2560x1440_png": (photo(2560, 1440, "PNG"), "image/png"),
    }
    results = {}
    for name, (data, mime) in cases.items():
        encoded = base64.b64encode(data).decode()
        seconds = []
        for _ in range(args.repeat):
            started = time.process_time()
            [picture] = prepare_pictures([(encoded, mime)], settings)
            seconds.append(time.process_time() - started)
        results[name] = {
            "input_bytes": len(data),
            "output_jpeg_bytes": len(picture.jpeg),
            "output_size": [picture.width, picture.height],
            "to_model_base64_bytes": len(picture.data_url()),
            "cpu_ms_median": round(statistics.median(seconds) * 1000, 1),
        }
    print(json.dumps({"image_max_side": settings.image_max_side, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
