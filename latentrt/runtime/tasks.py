"""Tasks: text to image, image to image, inpainting (4- and 9-channel UNets) as small objects.

A task changes only how the latents start and what happens around each UNet call; the denoise loop is the same
for all of them. Each has four hooks, all with defaults that do nothing:

    start(pipe, plan, sampler, rng) -> (x, timesteps)   the starting latents and the timesteps that run
    model_input(x_in) -> x_in                            what the UNet sees (9-channel inpainting adds mask channels)
    after_step(i, x) -> x                                after the sampler's step i (4-channel inpainting's blend)
    finish(images) -> images                             the decoded images (a padded crop pasted back)

`task_for(pipe, request)` picks the task from the request's arguments and makes the checks that belong to it.
Random draws are made in diffusers' order, so a seed gives diffusers' image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from latentrt.runtime.folder import REEXPORT_HINT, TINY_ENCODER, TINY_VAE_HINT
from latentrt.runtime.image_inputs import as_pil, crop_region, mask_array, paste_back
from latentrt.runtime.defaults import DEFAULT_STRENGTH
from latentrt.runtime.request import Request, check_padding, check_strength


class Task:
    name = "txt2img"
    strength: float | None = None
    encodes = False  # encodes an image with the VAE (the memory guard counts the encoder)
    mask_padding: int | None = None
    crop: tuple[int, int, int, int] | None = None  # inpainting's padded box (padding_mask_crop): control images are cut alike

    def check_inputs(self, height: int, width: int) -> None:
        """The checks that need the inputs at the output size (inpainting's mask), made by `Pipeline.check` once the
        memory guard has passed, so that a request too large is refused before anything is resized."""

    def start(self, pipe, plan, sampler, rng: np.random.Generator) -> tuple[NDArray[np.float32], NDArray]:
        raise NotImplementedError

    def model_input(self, x_in: NDArray[np.float32]) -> NDArray[np.float32]:
        return x_in

    def after_step(self, i: int, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return x

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        return images


@dataclass
class TextToImage(Task):
    latents: NDArray[np.float32] | None = None  # the caller's starting noise, else drawn from the generator

    def start(self, pipe, plan, sampler, rng):
        sampler.set_timesteps(plan.steps)
        shape = (plan.batch, *pipe.latent_shape(plan.height, plan.width))
        if self.latents is None:
            latents = rng.standard_normal(shape, dtype=np.float32)
        else:
            latents = np.asarray(self.latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape} for this size and batch, got {latents.shape}")
        return latents * np.float32(sampler.init_noise_sigma), sampler.timesteps  # (B, C, H/f, W/f)


@dataclass
class ImageToImage(Task):
    """diffusers' StableDiffusionImg2ImgPipeline: the image's latents noised to the strength's first timestep."""

    source: Image.Image = None
    strength: float = DEFAULT_STRENGTH["img2img"]
    name = "img2img"
    encodes = True

    def pixels(self, pipe, plan) -> NDArray[np.float32]:
        return pipe.prepare_image(self.source, plan.height, plan.width)

    def start(self, pipe, plan, sampler, rng):
        timesteps = img2img_timesteps(sampler, plan.steps, self.strength)
        init = np.repeat(pipe.encode_image(self.pixels(pipe, plan), rng, plan.vae), plan.batch, axis=0)  # one encoding, repeated like diffusers
        noise = rng.standard_normal((plan.batch, *pipe.latent_shape(plan.height, plan.width)), dtype=np.float32)
        return sampler.add_noise(init, noise, np.repeat(timesteps[:1], plan.batch)).astype(np.float32, copy=False), timesteps


@dataclass
class Inpaint(ImageToImage):
    """diffusers' StableDiffusionInpaintPipeline with a 4-channel UNet: everything is denoised and, after every step,
    the unmasked region is replaced by the image's latents noised to the next timestep."""

    mask_source: Image.Image = None
    mask: NDArray[np.float32] = None  # (1, 1, H, W) of 0 and 1, 1 = repaint: made by check_inputs
    crop: tuple[int, int, int, int] | None = None  # padding_mask_crop's box in the image
    mask_padding: int | None = None
    strength: float = DEFAULT_STRENGTH["inpaint"]
    name = "inpaint"

    def pixels(self, pipe, plan) -> NDArray[np.float32]:
        return pipe.prepare_image(self.source, plan.height, plan.width, self.crop)

    def check_inputs(self, height, width):
        self.mask = mask_array(self.mask_source, height, width, self.crop)  # raises for an all-black mask

    def start(self, pipe, plan, sampler, rng):
        # diffusers' prepare_latents and prepare_mask_latents, drawing in its order
        timesteps = img2img_timesteps(sampler, plan.steps, self.strength)
        pixels, batch = self.pixels(pipe, plan), plan.batch
        full = self.strength == 1.0  # diffusers' is_strength_max: pure noise, the image only through the mask
        self.init = None if (full and self.channels) else np.repeat(pipe.encode_image(pixels, rng, plan.vae), batch, axis=0)
        self.noise = rng.standard_normal((batch, *pipe.latent_shape(plan.height, plan.width)), dtype=np.float32)
        if full:
            x = self.noise * np.float32(sampler.init_noise_sigma)
        else:
            x = sampler.add_noise(self.init, self.noise, np.repeat(timesteps[:1], batch)).astype(np.float32, copy=False)
        self.prepare_mask(pipe, plan, pixels, rng)
        self.sampler, self.timesteps, self.batch = sampler, timesteps, batch
        return x, timesteps

    channels = False  # the UNet takes the mask and the masked image as extra input channels

    def prepare_mask(self, pipe, plan, pixels, rng) -> None:
        f = pipe.folder.vae.scale_factor
        # diffusers encodes the masked image here too (unused by a 4-channel UNet): draw its sample alike
        rng.standard_normal((1, pipe.folder.vae.latent_channels, plan.height // f, plan.width // f), dtype=np.float32)
        self.blend = self.mask[:, :, ::f, ::f]  # (1, 1, h, w): 1 where the model paints

    def after_step(self, i, x):
        known = self.init  # the image noised to the next step
        if i < len(self.timesteps) - 1:
            known = self.sampler.add_noise(self.init, self.noise, np.repeat(self.timesteps[i + 1:i + 2], self.batch))
        return ((1 - self.blend) * known + self.blend * x).astype(np.float32, copy=False)

    def finish(self, images):
        if self.crop is None:
            return images
        return [paste_back(generated, self.source, self.mask_source, self.crop) for generated in images]  # at the image's size


@dataclass
class InpaintChannels(Inpaint):
    """A 9-channel inpainting UNet: it sees the latents, the mask and the masked image's latents concatenated."""

    channels = True

    def prepare_mask(self, pipe, plan, pixels, rng) -> None:
        f, batch = pipe.folder.vae.scale_factor, plan.batch
        masked = pixels * (self.mask < 0.5).astype(np.float32)  # the image with the region to repaint blacked out
        masked_latents = np.repeat(pipe.encode_image(masked, rng, plan.vae), batch, axis=0)
        mask_latents = np.repeat(self.mask[:, :, ::f, ::f], batch, axis=0)  # torch's 'nearest' at an integer factor
        if plan.do_cfg:
            masked_latents, mask_latents = np.concatenate([masked_latents] * 2), np.concatenate([mask_latents] * 2)
        self.extra = np.concatenate([mask_latents, masked_latents], axis=1).astype(np.float32)

    def model_input(self, x_in):
        return np.concatenate([x_in.astype(np.float32, copy=False), self.extra], axis=1)

    def after_step(self, i, x):
        return x


def task_for(pipe, request: Request) -> tuple[Task, int | None, int | None]:
    """The request's task, checked against the folder, and the height and width it implies (the image's size rounded
    down to the model's multiple, unless the request gives them; None for text to image: the model's native size)."""
    folder, r = pipe.folder, request
    padding = check_padding(r.padding_mask_crop)
    if padding is not None and r.mask_image is None:
        raise ValueError("padding_mask_crop crops around the mask: give mask_image (--mask) too")
    if r.mask_image is not None and r.image is None:
        raise ValueError("mask_image needs the image to inpaint: give image= too (--image with --mask in the CLI)")
    if r.image is None and pipe.family.is_refiner:
        raise ValueError(
            f"{folder.path} is an SDXL refiner, an image to image model: give it an image (image=..., --image), "
            f"for example the base model's output, and a strength (diffusers' default for it: {DEFAULT_STRENGTH['refiner']})"
        )
    if folder.inpaint_unet and r.mask_image is None:
        raise ValueError(
            f"{folder.path} has a {folder.unet.in_channels}-channel inpainting UNet: it needs an image "
            "and a mask_image (--image and --mask in the CLI)"
        )
    if r.image is None:
        if r.strength is not None:
            raise ValueError("strength applies to image to image only: give an image too (--image in the CLI)")
        return TextToImage(r.latents), r.height, r.width
    if r.latents is not None:
        raise ValueError("give either image (image to image) or latents (text to image), not both")
    kind = "refiner" if pipe.family.is_refiner else "img2img" if r.mask_image is None else "inpaint"
    strength = check_strength(DEFAULT_STRENGTH[kind] if r.strength is None else r.strength)
    if (r.vae or pipe.vae) == "tiny":
        if TINY_ENCODER not in folder.components:
            raise ValueError(f"{folder.path} has no tiny VAE encoder (vae_encoder_tiny/), which image to image with "
                             f"vae='tiny' needs: use vae='full', or {TINY_VAE_HINT}")
    elif "vae_encoder" not in folder.components:
        raise ValueError(f"{folder.path} has no vae_encoder/model.onnx, which image to image needs: {REEXPORT_HINT} "
                         "(it writes the VAE encoder)")
    source = as_pil(r.image, "image")
    height, width = pipe.image_size(source, r.height, r.width)
    if r.mask_image is None:
        return ImageToImage(source=source, strength=strength), height, width
    mask_source = as_pil(r.mask_image, "mask_image")
    if mask_source.size != source.size:
        raise ValueError(
            f"the mask is {mask_source.size[0]}x{mask_source.size[1]} but the image is {source.size[0]}x"
            f"{source.size[1]}: give a mask of the image's size (white = repaint, black = keep)"
        )
    crop = None if padding is None else crop_region(mask_source, width, height, padding)
    kind = InpaintChannels if folder.inpaint_unet else Inpaint
    return kind(source=source, strength=strength, mask_source=mask_source, crop=crop, mask_padding=padding), height, width


def img2img_timesteps(sampler, steps: int, strength: float) -> NDArray:
    """diffusers' img2img get_timesteps: the last `int(steps * strength)` steps, and the scheduler told where they start."""
    sampler.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    begin = t_start * sampler.order
    if hasattr(sampler, "set_begin_index"):
        sampler.set_begin_index(begin)
    return sampler.timesteps[begin:]
