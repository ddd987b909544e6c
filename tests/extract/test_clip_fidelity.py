"""The released grid features' exact recipe, proven offline against the code the reference ran:
torchvision 0.9's Resize(224, bicubic) / CenterCrop(224) / ToTensor / Normalize (as OpenAI's
CLIP composes them) and OpenAI's CLIP VisionTransformer in fp32, with the reference's forward
(ln_post on every token; grid = tokens 1:, global = ln_post(class) @ proj). Both are vendored
as test fixtures with their licences (tests/helpers/vendored_*.py); nothing is downloaded."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.extract_models import write_pictures
from helpers.vendored_openai_clip import VisionTransformer
from helpers.vendored_torchvision_0_9 import InterpolationMode, center_crop, normalize, resize, to_tensor
from hin.extract import build_extractor, extract_to_file, list_images
from hin.extract.images import CLIP_MEAN, CLIP_STD, ClipPreprocessor

transformers = pytest.importorskip("transformers")

CLIP_SIZE, PATCH, WIDTH, LAYERS, HEADS, OUTPUT = 224, 14, 64, 2, 4, 32
# (width, height): COCO's commonest shapes, squares, one pixel over, upscaled small pictures,
# extreme aspect ratios, and seeded random sizes
SIZES = [(640, 427), (427, 640), (640, 480), (480, 640), (500, 375), (224, 224), (225, 224),
         (224, 226), (227, 300), (100, 150), (57, 500), (1000, 224), (223, 1001), (333, 500)]
SIZES += [tuple(int(v) for v in pair) for pair in np.random.default_rng(17).integers(60, 900, (26, 2))]


def clip_transform(picture):
    """OpenAI CLIP's `_transform(224)` on an RGB picture, through torchvision 0.9's code."""
    resized = resize(picture, CLIP_SIZE, interpolation=InterpolationMode.BICUBIC)
    return normalize(to_tensor(center_crop(resized, CLIP_SIZE)), CLIP_MEAN, CLIP_STD)


def _picture(width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_clip_preparation_is_bit_identical_to_torchvision_0_9_over_many_sizes():
    prepare = ClipPreprocessor(CLIP_SIZE)
    leftovers = set()
    for seed, (width, height) in enumerate(SIZES):
        picture = _picture(width, height, seed)
        ours = torch.from_numpy(prepare(picture))
        theirs = clip_transform(picture)
        assert ours.dtype == theirs.dtype == torch.float32
        assert torch.equal(ours, theirs), (width, height)
        leftovers.add(max(prepare.resized_shape(width, height)) - CLIP_SIZE)
    # the crop's rounding is exercised: every remainder of the excess modulo 4, ties included
    assert {excess % 4 for excess in leftovers} == {0, 1, 2, 3}


def _openai_vision_tower(seed: int = 0) -> VisionTransformer:
    """OpenAI's VisionTransformer, small, with every weight (norms and biases too) random."""
    torch.manual_seed(seed)
    visual = VisionTransformer(CLIP_SIZE, PATCH, WIDTH, LAYERS, HEADS, OUTPUT).eval()
    with torch.no_grad():
        for parameter in visual.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return visual


def _to_transformers(visual: VisionTransformer, directory):
    """The same weights in transformers' CLIPVisionModelWithProjection layout, saved."""
    config = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, image_size=CLIP_SIZE, patch_size=PATCH, projection_dim=OUTPUT,
        hidden_act="quick_gelu", layer_norm_eps=1e-5)
    source = visual.state_dict()
    weights = {"vision_model.embeddings.class_embedding": source["class_embedding"],
               "vision_model.embeddings.patch_embedding.weight": source["conv1.weight"],
               "vision_model.embeddings.position_embedding.weight": source["positional_embedding"],
               "visual_projection.weight": source["proj"].t()}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            weights[f"vision_model.{ours}.{kind}"] = source[f"{theirs}.{kind}"]
    for layer in range(LAYERS):
        block, into = f"transformer.resblocks.{layer}.", f"vision_model.encoder.layers.{layer}."
        for kind in ("weight", "bias"):
            for name, packed in zip("qkv", source[f"{block}attn.in_proj_{kind}"].chunk(3)):
                weights[f"{into}self_attn.{name}_proj.{kind}"] = packed
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                 ("mlp.fc2", "mlp.c_proj")):
                weights[f"{into}{ours}.{kind}"] = source[f"{block}{theirs}.{kind}"]
    model = transformers.CLIPVisionModelWithProjection(config)
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(directory)
    return directory


@torch.no_grad()
def last_block_tokens(visual: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """OpenAI's tower up to its last block (the lines of its forward before ln_post), [N, L, D]."""
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding)
    return visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)


@torch.no_grad()
def reference_grid_forward(visual: VisionTransformer, pixels: torch.Tensor):
    """The reference extraction's forward: ln_post on every token -> (grid = tokens 1:,
    global = class @ proj)."""
    x = visual.ln_post(last_block_tokens(visual, pixels))
    return x[:, 1:, :], x[:, 0, :] @ visual.proj


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_clip_grid_features_equal_openai_clip_with_the_reference_forward(tmp_path):
    visual = _openai_vision_tower()
    extractor = build_extractor("clip-grid", model=str(_to_transformers(visual, tmp_path / "clip")),
                                device="cpu", precision="fp32", store_as="float32")
    sizes = {"1.png": (427, 640), "2.png": (640, 480), "3.png": (224, 301)}   # (height, width)
    folder = write_pictures(tmp_path / "pictures", sizes)
    files = list_images(folder)
    pixels = torch.stack([clip_transform(Image.open(file.path).convert("RGB")) for file in files])
    grids, globals_ = reference_grid_forward(visual, pixels)
    with torch.no_grad():
        assert torch.allclose(globals_, visual(pixels), atol=1e-6)        # = CLIP's image embedding
    assert grids.shape == (3, (CLIP_SIZE // PATCH) ** 2, WIDTH) and globals_.shape == (3, OUTPUT)

    report = extract_to_file(extractor, files, tmp_path / "grid.h5", workers=0, progress=False)
    assert report.written == 3
    with h5py.File(tmp_path / "grid.h5") as handle:
        for file, grid, embedding in zip(files, grids, globals_):
            stored_grid = handle[f"{file.image_id}_features"][()]
            stored_global = handle[f"{file.image_id}_global"][()]
            assert stored_grid.dtype == stored_global.dtype == np.float32
            np.testing.assert_allclose(stored_grid, grid.numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(stored_global, embedding.numpy(), rtol=0, atol=1e-5)
    # the comparison can fail: the tokens without ln_post are far from what was stored
    assert not np.allclose(stored_grid, last_block_tokens(visual, pixels)[-1, 1:].numpy(), atol=0.1)
