"""What a client sends, bounded before any work: text fields (length, valid Unicode) and uploaded images (their
size read from the header, decoded later in a thread and only when the request is admitted)."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Annotated

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BeforeValidator

from .state import ApiError

MAX_TEXT = 4000  # characters of a prompt, negative prompt, model or sampler name (A1111's prompt limit)


def _text(value):
    """At most MAX_TEXT characters, and text UTF-8 can carry (a lone surrogate such as "\\ud800" cannot: the PNG text
    chunk and the JSON answer would fail after the work); other types are left to the field's own validation."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"has {len(value):,} characters, at most {MAX_TEXT} are accepted: shorten it")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"is not valid Unicode text (character {error.start} is a lone surrogate "
                             f"{value[error.start]!a}): send UTF-8 text") from None
    return value


# every text field of every route, checked in one place
Text = Annotated[str, BeforeValidator(_text)]


@dataclass
class Upload:
    """A base64 image as sent (a data: URL prefix allowed), to be decoded as `mode` (inverted if `invert`):
    `open` reads its header only (size and format), `decode` decodes it. Both run off the event loop."""

    data: str
    field: str
    mode: str = "RGB"
    invert: bool = False
    _image: Image.Image | None = None

    def open(self, max_pixels: int | None) -> Image.Image:
        """The image opened lazily (PIL reads the header, not the pixels): 422 if it is not an image, 413 if its
        decoded size would be over `max_pixels` (--max-input-pixels)."""
        if self._image is None:
            data = self.data
            if "," in data[:100] and data.lstrip().startswith("data:"):
                data = data.split(",", 1)[1]
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, "bad_image", f"{self.field} is not base64: send the image file's bytes base64-encoded") from None
            try:
                self._image = Image.open(io.BytesIO(raw))
            except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, OSError, ValueError):
                raise ApiError(422, "bad_image", f"{self.field} is not an image PIL can read: send a PNG, JPEG or WebP "
                               "file's bytes") from None
        width, height = self._image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ApiError(413, "image_too_large",
                           f"{self.field} is {width}x{height} = {width * height:,} pixels, over this server's "
                           f"--max-input-pixels={max_pixels:,}: send a smaller image")
        return self._image

    def decode(self, max_pixels: int | None) -> Image.Image:
        """The image's pixels as `mode` (the header checked first)."""
        image = self.open(max_pixels)
        try:
            with image:
                image.load()
                decoded = image.convert(self.mode)
        except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
            reason = str(error).split(" <", 1)[0]  # Pillow may name the buffer object (with its address)
            raise ApiError(422, "bad_image", f"{self.field} could not be decoded ({reason}): send a complete image file") from None
        return ImageOps.invert(decoded) if self.invert else decoded
