"""`latentrt serve --sizes 512x512,768x512`: the only sizes a server generates, compiled at start.

OpenVINO compiles each network per shape (a second or two for a small model, more for SD 1.5, and memory per
shape until the bound of `max_compiled_shapes` releases it): a server that knows its sizes compiles them all at
start and refuses every other size with 422, so no request pays for a compilation and memory is taken once.
"""

from __future__ import annotations

from latentrt.runtime.pipeline import Pipeline

from .state import ApiError


def parse_sizes(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """'512x512,768x512' (width x height) -> ((512, 512), (768, 512)); None or '' -> None (every size)."""
    if not text or not text.strip():
        return None
    sizes = []
    for part in text.split(","):
        width, sep, height = part.strip().lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise ValueError(f"--sizes takes WIDTHxHEIGHT pairs separated by commas (for example 512x512,768x512), "
                             f"got {part.strip()!r}")
        if (int(width), int(height)) not in sizes:
            sizes.append((int(width), int(height)))
    return tuple(sizes)


def size_list(sizes) -> str:
    return ", ".join(f"{w}x{h}" for w, h in sizes)


def check_allowed_size(sizes, width: int, height: int) -> None:
    """422 for an output size not in the allow-list (`ServeOptions.sizes`; None: every size is allowed)."""
    if sizes and (int(width), int(height)) not in {tuple(s) for s in sizes}:
        raise ApiError(422, "size_not_allowed", f"{width}x{height} is not a size this server generates: it serves "
                       f"{size_list(sizes)} (--sizes); ask for one of them")


def compile_sizes(pipe: Pipeline, sizes, max_batch: int, image: bool) -> None:
    """Compile every allowed size for every batch size the server may run (1 to max_batch) and, for image tasks,
    the VAE encoder: pinned, so the compiled-shape bound never releases them (checked against the pipeline's
    own size rules first, so a bad size fails the load with its reason)."""
    for width, height in sizes or ():
        pipe.check_size(height, width)
        for batch in range(1, max_batch + 1):
            pipe.compile(height, width, batch=batch, image=image and batch == 1)
