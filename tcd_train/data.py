"""Training data: an image folder with captions, webdataset shards, or a pre-encoded latents cache.

Every sample has a *global index* g = 0, 1, 2, ... (the order of one endless stream over the data), and the
sample with index g is the same whatever the number of processes: at micro-step m, process r of W with
per-process batch B trains on g = m W B + r B + j, j < B. Map-style sources (folder, cache) visit the data
in a fresh seeded permutation each epoch; shard streams in shard order, epoch after epoch (shuffle the
shards when writing them, as LAION / CC12M shards are). Each process reads the whole shard stream and
decodes only its own samples: exact layout-independence at the cost of every process reading every byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .options import Resolution, TrainerError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CACHE_INDEX = "index.json"
CACHE_CHUNK = 256


def sample_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed for one sample's draws, from the run's seed and the sample's global index."""
    digest = hashlib.blake2b(":".join(str(p) for p in (seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of sample ``index``: crop / flip, then noise, then the training points."""
    return torch.Generator().manual_seed(sample_seed(seed, "sample", index))


@dataclass
class Sample:
    index: int  # global index g
    key: str
    caption: str
    image: Image.Image | None = None  # decoded RGB image, or
    latent: torch.Tensor | None = None  # a raw VAE latent [1, C, h, w] (from the cache)


def process_indices(micro_step: int, rank: int, world: int, batch: int) -> list[int]:
    """The global sample indices process ``rank`` trains on at micro-step ``micro_step``."""
    first = micro_step * world * batch + rank * batch
    return list(range(first, first + batch))


# --- image folder -------------------------------------------------------------------------------------


class ImageFolder:
    """Images under a folder (recursively, sorted) with ``<same name>.txt`` captions beside them: the
    layout ComfyUI's "Load Image and Text Dataset from Folder" node and kohya's scripts read."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TrainerError(f"--train_data_dir {root}: no such folder")
        self.images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.images:
            raise TrainerError(f"--train_data_dir {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it")
        for path in self.images[:1]:
            _open_image(path.read_bytes(), str(path))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, item: int, index: int) -> Sample:
        path = self.images[item]
        caption_path = path.with_suffix(".txt")
        caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else ""
        return Sample(index, str(path.relative_to(self.root)), caption, image=_open_image(path.read_bytes(), path))


def _open_image(data: bytes, name: object) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many kinds
        raise TrainerError(f"unreadable image {name}: {error}") from None
    return image.convert("RGB")


# --- latents cache ------------------------------------------------------------------------------------


class LatentsCache:
    """Raw VAE latents (as ComfyUI's VAE Encode returns them) and captions, in chunks of safetensors."""

    def __init__(self, root: str | os.PathLike, resolution: Resolution) -> None:
        from safetensors.torch import load_file

        self.root = Path(root)
        index = json.loads((self.root / CACHE_INDEX).read_text())
        if (index["width"], index["height"]) != (resolution.width, resolution.height):
            raise TrainerError(
                f"--latents_cache {root} holds {index['width']}x{index['height']} latents, but --resolution is "
                f"{resolution.width}x{resolution.height}: use another cache folder"
            )
        self.captions: list[str] = index["captions"]
        self.keys: list[str] = index["keys"]
        self.latents = torch.cat([load_file(str(self.root / name))["latents"] for name in index["chunks"]])
        if len(self.latents) != len(self.captions):
            raise TrainerError(f"--latents_cache {root} is incomplete; delete it and encode again")

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, item: int, index: int) -> Sample:
        return Sample(index, self.keys[item], self.captions[item], latent=self.latents[item : item + 1].clone())


def write_latents_cache(root: str | os.PathLike, resolution: Resolution, samples: Iterator[Sample], encode) -> int:
    """Encode every sample once (``encode(list[Sample]) -> [n, C, h, w]``) and write the cache; returns n."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    chunks, captions, keys, pending = [], [], [], []

    def flush() -> None:
        if pending:
            name = f"latents-{len(chunks):05d}.safetensors"
            save_file({"latents": encode(pending).contiguous()}, str(root / name))
            chunks.append(name)
            pending.clear()

    for sample in samples:
        pending.append(sample)
        captions.append(sample.caption)
        keys.append(sample.key)
        if len(pending) == CACHE_CHUNK:
            flush()
    flush()
    index = {"width": resolution.width, "height": resolution.height, "chunks": chunks, "captions": captions,
             "keys": keys}  # fmt: skip
    tmp = root / (CACHE_INDEX + ".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(root / CACHE_INDEX)
    return len(captions)


# --- webdataset shards --------------------------------------------------------------------------------


def expand_shards(spec: str) -> list[str]:
    """webdataset's URL list: '::'-separated, brace ranges expanded ({000000..000099})."""
    try:
        from webdataset.shardlists import expand_urls
    except ImportError:
        raise TrainerError("--train_shards_path_or_url needs webdataset: pip install webdataset") from None

    urls = list(expand_urls(spec))
    if not urls:
        raise TrainerError(f"--train_shards_path_or_url {spec!r}: names no shards")
    return urls


def _is_local(url: str) -> bool:
    scheme = urllib.parse.urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def _check_http_shards(urls: list[str], timeout: float = 20.0) -> None:
    """Every http(s) shard must answer a HEAD request with success (asked 16 at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(url: str) -> str | None:
        request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - the user's own shard URLs
        try:
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310
                return None
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, OSError) as error:
            return f"unreachable: {getattr(error, 'reason', error)}"

    with ThreadPoolExecutor(max_workers=16) as pool:
        for url, found in zip(urls, pool.map(problem, urls), strict=True):
            if found:
                raise TrainerError(f"--train_shards_path_or_url: shard {url} cannot be read ({found})")


def check_shards(urls: list[str]) -> None:
    """Every local shard must exist and open as a tar with at least one member; every http(s) shard must
    answer; other URLs (``pipe:``, ``s3://``, ...) are opened by webdataset when read."""
    _check_http_shards([u for u in urls if urllib.parse.urlparse(u).scheme in ("http", "https")])
    for url in urls:
        if not _is_local(url):
            continue
        path = urllib.parse.urlparse(url).path if url.startswith("file:") else url
        if not os.path.isfile(path):
            raise TrainerError(f"--train_shards_path_or_url: shard {url} does not exist")
        try:
            with tarfile.open(path) as tar:
                if tar.next() is None:
                    raise TrainerError(f"--train_shards_path_or_url: shard {url} is an empty tar")
        except (tarfile.TarError, OSError) as error:
            raise TrainerError(f"--train_shards_path_or_url: shard {url} is not a readable tar ({error})") from None


class ShardStream:
    """The endless stream over webdataset shards (shard order, then epoch after epoch)."""

    def __init__(self, spec: str) -> None:
        self.urls = expand_shards(spec)
        check_shards(self.urls)

    def _raw(self) -> Iterator[dict]:
        import webdataset as wds

        while True:
            pipeline = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples())
            empty = True
            for raw in pipeline:
                empty = False
                yield raw
            if empty:
                raise TrainerError("--train_shards_path_or_url: the shards hold no samples")

    def one_epoch(self) -> Iterator[Sample]:
        """Every sample once, decoded (for writing a latents cache)."""
        import webdataset as wds

        pipeline = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples())
        for index, raw in enumerate(pipeline):
            yield decode_wds(raw, index)

    def samples(self, wanted) -> Iterator[Sample]:
        """Decoded samples whose global index satisfies ``wanted(g)``, in order, forever."""
        for index, raw in enumerate(self._raw()):
            if wanted(index):
                yield decode_wds(raw, index)


def decode_wds(raw: dict, index: int) -> Sample:
    image_key = next((k for k in WDS_IMAGE_KEYS if k in raw), None)
    name = f"{raw.get('__url__', '?')}:{raw.get('__key__', index)}"
    if image_key is None:
        raise TrainerError(f"--train_shards_path_or_url: sample {name} has no image ({'/'.join(WDS_IMAGE_KEYS)})")
    caption = raw["txt"].decode("utf-8").strip() if "txt" in raw else ""
    return Sample(index, str(raw.get("__key__", index)), caption, image=_open_image(raw[image_key], name))


# --- the per-process view -----------------------------------------------------------------------------


class ProcessData:
    """The samples one process trains on, micro-step by micro-step (see the module docstring)."""

    def __init__(self, source, seed: int, rank: int, world: int, batch: int, start_micro_step: int) -> None:
        self.source, self.seed, self.rank, self.world, self.batch = source, seed, rank, world, batch
        self.micro_step = start_micro_step
        self._stream = None
        if isinstance(source, ShardStream):
            start = start_micro_step * world * batch
            block = world * batch

            def wanted(g: int) -> bool:
                return g >= start and (g % block) // batch == rank

            self._stream = source.samples(wanted)
        self._perms: dict[int, list[int]] = {}

    def _item(self, index: int) -> int:
        epoch, position = divmod(index, len(self.source))
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(len(self.source), generator=gen).tolist()}
        return self._perms[epoch][position]

    def next_batch(self) -> list[Sample]:
        indices = process_indices(self.micro_step, self.rank, self.world, self.batch)
        self.micro_step += 1
        if self._stream is not None:
            batch = [next(self._stream) for _ in indices]
            assert [s.index for s in batch] == indices  # noqa: S101 - the layout invariant
            return batch
        return [self.source.load(self._item(g), g) for g in indices]


def prepare_image(
    image: Image.Image, resolution: Resolution, crop: str, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, dict]:
    """Resize to cover the target (aspect kept, bicubic), crop (centre or random), maybe flip.

    Returns the pixels [H, W, 3] in 0..1 (ComfyUI's IMAGE layout) and SDXL's size conditioning
    (original width / height, crop offsets), as ComfyUI's CLIPTextEncodeSDXL names them.
    """
    width, height = resolution.width, resolution.height
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if crop == "random":
        left = int(torch.randint(0, new_w - width + 1, (1,), generator=generator))
        top = int(torch.randint(0, new_h - height + 1, (1,), generator=generator))
    else:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    size = {"width": image.width, "height": image.height, "crop_w": left, "crop_h": top,
            "target_width": width, "target_height": height}  # fmt: skip
    return pixels.float() / 255.0, size
