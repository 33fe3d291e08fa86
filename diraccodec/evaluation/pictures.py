"""Side-by-side crops: the original, AVIF at the same file size, our base image and our
diffusion decode, so the difference the steps make can be seen, not only measured."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from diraccodec.evaluation.codecs import AVIF_OPTIONS, decode_with_pillow, encode_with_pillow
from diraccodec.evaluation.metrics import lpips, psnr

LABEL_HEIGHT = 44


def avif_at_most(image: Image.Image, max_bytes: int) -> tuple[bytes, int]:
    """The highest-quality AVIF file no larger than max_bytes (quality 0 if none is), and its quality."""
    low, high = 0, 100
    best = encode_with_pillow(image, "AVIF", 0, **AVIF_OPTIONS), 0
    while low <= high:
        middle = (low + high) // 2
        data = encode_with_pillow(image, "AVIF", middle, **AVIF_OPTIONS)
        if len(data) <= max_bytes:
            best, low = (data, middle), middle + 1
        else:
            high = middle - 1
    return best


def labelled_panel(crop: Image.Image, zoom: int, title: str, detail: str) -> Image.Image:
    enlarged = crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)
    panel = Image.new("RGB", (enlarged.width, enlarged.height + LABEL_HEIGHT), "white")
    panel.paste(enlarged, (0, LABEL_HEIGHT))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=15)
    draw.text((6, 3), title, fill="black", font=font)
    draw.text((6, 22), detail, fill=(70, 70, 70), font=font)
    return panel


def comparison_picture(
    image: Image.Image, level: float, steps: int, box: tuple[int, int, int], seed: int = 0, zoom: int = 2,
    weights: str | None = None, device: str = "auto",
) -> Image.Image:
    """Four panels of the crop `box` = (left, top, size); figures are for the whole image."""
    from diraccodec import api

    image = image.convert("RGB")
    pixels = image.width * image.height
    data = api.encode(image, level, weights=weights, device=device)
    base = api.decode(data, steps=0, weights=weights, device=device)
    enhanced = api.decode(data, steps=steps, seed=seed, weights=weights, device=device)
    avif_data, avif_quality = avif_at_most(image, len(data))
    avif = decode_with_pillow(avif_data)
    left, top, size = box
    region = (left, top, left + size, top + size)

    def figures(decoded: Image.Image, size_bytes: int) -> str:
        return f"{8 * size_bytes / pixels:.3f} bpp  {psnr(image, decoded):.2f} dB  LPIPS {lpips(image, decoded):.3f}"

    panels = [
        labelled_panel(image.crop(region), zoom, "original", f"{image.width}x{image.height}"),
        labelled_panel(avif.crop(region), zoom, f"AVIF q{avif_quality} "
                       f"({'same size or smaller' if len(avif_data) <= len(data) else 'its smallest, larger'})",
                       figures(avif, len(avif_data))),
        labelled_panel(base.crop(region), zoom, f"diraccodec level {level:g}, 0 steps", figures(base, len(data))),
        labelled_panel(enhanced.crop(region), zoom, f"diraccodec level {level:g}, {steps} steps",
                       figures(enhanced, len(data))),
    ]
    return side_by_side(panels)


def side_by_side(panels: list[Image.Image], gap: int = 8) -> Image.Image:
    canvas = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas


def is_valid_box(image: Image.Image, box: tuple[int, int, int]) -> bool:
    left, top, size = box
    return size > 0 and left >= 0 and top >= 0 and left + size <= image.width and top + size <= image.height
