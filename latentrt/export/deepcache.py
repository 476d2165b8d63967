"""DeepCache (Ma, Fang, Wang, CVPR 2024): the UNet split at one skip branch, so that the steps between two full
UNet calls run only its shallow end on a cached deep feature.

Skip branches are the tensors diffusers' UNet keeps in `down_block_res_samples`, numbered from the shallowest:
0 is conv_in's output, then every down layer's output in order (each resnet, with its attention where the block
has them, then the block's downsampler). The up blocks consume them in reverse order, one per up resnet. With
the split at branch b:

- the full UNet also outputs `deepcache_feature`: the hidden state entering the up resnet that consumes branch b
  (before its concatenation with that branch);
- the shallow UNet takes that feature as an input and computes only the time embedding, conv_in, the down
  layers that produce branches 1..b, the up resnets (and attentions, upsamplers) that consume branches b..0,
  and the output head. Everything deeper (the rest of the down path, the mid block, the deep up layers) is
  what the cache stands in for.

For SD 1.x/2.x (three branches per resolution level) b is DeepCache's `cache_branch_id`
(cache_block_id = b // 3, cache_layer_id = b % 3); 0, the default, is the shallowest and fastest split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FEATURE = "deepcache_feature"


@dataclass(frozen=True)
class Split:
    """Where branch `branch` sits: the up resnet that consumes it, and the feature entering that resnet."""

    branch: int
    branches: int  # how many skip branches the UNet has
    up_block: int  # the up block (diffusers' order) of the consuming resnet
    up_resnet: int  # its index in that block
    channels: int  # the feature's channels
    downsamples: int  # downsamplers between the latents and the feature: each halves a side, rounding up


def down_layers(unet) -> list[tuple[int, str, int]]:
    """The layers that produce branches 1.., in order: (down block, "resnet" or "downsampler", index)."""
    layers = []
    for i, block in enumerate(unet.down_blocks):
        layers += [(i, "resnet", j) for j in range(len(block.resnets))]
        if block.downsamplers is not None:
            layers.append((i, "downsampler", 0))
    return layers


def up_resnets(unet) -> list[tuple[int, int]]:
    """Every up resnet in call order: (up block, index); the k-th consumes branch (branches - 1 - k)."""
    return [(k, j) for k, block in enumerate(unet.up_blocks) for j in range(len(block.resnets))]


def locate_split(unet, branch: int) -> Split:
    layers = down_layers(unet)
    branches = len(layers) + 1
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < branches - 1:
        raise ValueError(
            f"cache branch {branch!r} is not a skip branch this UNet can split at: choose 0 (the shallowest: conv_in's "
            f"output; fastest) to {branches - 2} (the deepest but one; closest to the full UNet)"
        )
    ups = up_resnets(unet)
    if len(ups) != branches:
        raise ValueError(f"this UNet's up path takes {len(ups)} skip branches but its down path gives {branches}: "
                         "DeepCache needs diffusers' symmetric UNet2DConditionModel")
    up_block, up_resnet = ups[branches - 1 - branch]
    resnet = unet.up_blocks[up_block].resnets[up_resnet]
    skip = unet.conv_in.out_channels if branch == 0 else _channels_of(unet, layers[branch - 1])
    downsamples = sum(1 for _, kind, _ in layers[:branch] if kind == "downsampler")
    return Split(branch, branches, up_block, up_resnet, resnet.conv1.in_channels - skip, downsamples)


def _channels_of(unet, layer: tuple[int, str, int]) -> int:
    block, kind, index = layer
    if kind == "resnet":
        return unet.down_blocks[block].resnets[index].conv2.out_channels
    return unet.down_blocks[block].downsamplers[index].out_channels


def feature_module(unet, split: Split) -> tuple[nn.Module, bool]:
    """The module whose output is the feature, and whether that output is a tuple (attention: (hidden,))."""
    block = unet.up_blocks[split.up_block]
    if split.up_resnet > 0:
        attentions = getattr(block, "attentions", None)
        if attentions is not None:
            return attentions[split.up_resnet - 1], True
        return block.resnets[split.up_resnet - 1], False
    if split.up_block > 0:
        return unet.up_blocks[split.up_block - 1], False
    return unet.mid_block, False


class FeatureTap:
    """Records the feature while the stock diffusers forward runs (a forward hook on `feature_module`)."""

    def __init__(self, unet, split: Split):
        self.module, self.is_tuple = feature_module(unet, split)
        self.value = None

    def __enter__(self) -> "FeatureTap":
        def hook(_module, _inputs, output):
            self.value = output[0] if self.is_tuple else output

        self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def embeddings(unet, sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond_kwargs=None):
    """The time embedding and the processed text states, as diffusers' UNet2DConditionModel.forward makes them
    (for the configurations latentrt exports: no class labels, no image hints)."""
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, timestep_cond)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    return emb, states


def shallow_forward(unet, split: Split, sample, timestep, encoder_hidden_states, feature,
                    timestep_cond=None, added_cond_kwargs=None):
    """The UNet's output from `feature` (the full UNet's `deepcache_feature`) and the shallow layers only."""
    emb, states = embeddings(unet, sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
    hidden = unet.conv_in(sample)
    skips = [hidden]
    for block_index, kind, index in down_layers(unet)[: split.branch]:
        block = unet.down_blocks[block_index]
        if kind == "downsampler":
            hidden = block.downsamplers[index](hidden)
        else:
            hidden = block.resnets[index](hidden, emb)
            if getattr(block, "attentions", None) is not None:
                hidden = block.attentions[index](hidden, encoder_hidden_states=states, return_dict=False)[0]
        skips.append(hidden)

    hidden = feature
    order = up_resnets(unet)
    for position in range(split.branches - 1 - split.branch, split.branches):
        block_index, index = order[position]
        block = unet.up_blocks[block_index]
        branch = split.branches - 1 - position
        hidden = torch.cat([hidden, skips[branch]], dim=1)
        hidden = block.resnets[index](hidden, emb)
        if getattr(block, "attentions", None) is not None:
            hidden = block.attentions[index](hidden, encoder_hidden_states=states, return_dict=False)[0]
        if index == len(block.resnets) - 1 and block.upsamplers is not None:
            # the size of the branch the next resnet takes, as diffusers passes it (exact for odd sizes too)
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, skips[branch - 1].shape[2:])

    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
