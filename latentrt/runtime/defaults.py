"""Defaults stated once for every entry point (Python, CLI, HTTP, bench). No imports: the CLI reads it at start."""

# diffusers' default denoising strength of each image task: image to image, inpainting, an SDXL refiner
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0, "refiner": 0.3}


def strength_help() -> str:
    s = DEFAULT_STRENGTH
    return f"default {s['img2img']:g} for image to image, {s['inpaint']:g} for inpainting, {s['refiner']:g} for an SDXL refiner"
