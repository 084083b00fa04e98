"""The library's portable model file, read and written from Python.

The format is documented once, in `lib/inference/model_file.ts`: a safetensors file (8-byte
little-endian header length, a JSON header padded with spaces to 8 bytes, then raw
little-endian float32 tensors) whose `__metadata__` holds `format` ("sigma-rec"),
`format_version` ("1"), `model`, `config` (JSON), `items` (JSON, `"<pad>"` first), `info`
(JSON) and `checksum`: the SHA-256 of `key=value\\n` for every other metadata key in sorted
order, then for every tensor in sorted name order `name DTYPE [d0,d1,...]\\n` and its bytes.
Version "3" (what the library writes for more than 65,536 items) keeps the vocabulary in the
tensor `items` (U8: the JSON array, gzip-compressed) instead of the metadata; it is read here
too. Compact item tables (version "2", `item_dtype`) are not.

This module needs neither the `safetensors` package nor numpy: the layout is simple enough
to write directly, and the checksum must be computed over the exact bytes anyway. Files it
writes are ordinary safetensors files (`safetensors.torch.load_file` reads their weights).
"""

import gzip
import hashlib
import json
import struct

FORMAT = "sigma-rec"
VERSION = "1"
VOCABULARY_TENSOR_VERSION = "3"
PAD_TOKEN = "<pad>"


class ModelFileError(ValueError):
    """Bytes that are not a valid model file; the message names the source and the fault."""


def _checksum(metadata, tensors):
    """`tensors`: list of (name, shape, bytes), or (name, shape, bytes, dtype) where not F32.
    Returns "sha256:<hex>"."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != "checksum":
            h.update(f"{key}={metadata[key]}\n".encode("utf-8"))
    for name, shape, data, *dtype in sorted(tensors, key=lambda t: t[0]):
        kind = dtype[0] if dtype else "F32"
        h.update(f"{name} {kind} [{','.join(str(d) for d in shape)}]\n".encode("utf-8"))
        h.update(data)
    return "sha256:" + h.hexdigest()


def encode(model, config, items, params, info=None):
    """The bytes of a model file.

    `params` is an ordered list of (name, torch.Tensor), in the model's parameter order.
    """
    if not items or items[0] != PAD_TOKEN:
        raise ValueError(f'items[0] must be "{PAD_TOKEN}"')
    tensors = []
    header = {}
    offset = 0
    for name, value in params:
        data, shape = _f32_bytes(value)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        tensors.append((name, shape, data))
        offset += len(data)
    metadata = {
        "format": FORMAT,
        "format_version": VERSION,
        "model": model,
        "config": json.dumps(config, separators=(",", ":")),
        "items": json.dumps(items, separators=(",", ":"), ensure_ascii=False),
        "info": json.dumps(info or {}, separators=(",", ":")),
    }
    metadata["checksum"] = _checksum(metadata, tensors)
    text = json.dumps({"__metadata__": metadata, **header}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[2] for t in tensors)


def decode(data, source="model file"):
    """Decodes and checks a model file's bytes.

    Returns a dict: model, config, items, info, and params, an ordered list of
    (name, shape, float32 bytes) in data order.
    """
    if len(data) < 8:
        raise ModelFileError(f"{source}: holds {len(data)} bytes, too few for a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ModelFileError(f"{source}: header length {length} runs past the end (truncated?)")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{source}: the header is not JSON ({e})") from None
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f'{source}: not a model file of this library (format "{FORMAT}")')
    version = metadata.get("format_version")
    if version not in (VERSION, VOCABULARY_TENSOR_VERSION) or "item_dtype" in metadata:
        raise ModelFileError(
            f"{source}: format version {version!r} is not {VERSION!r} or "
            f"{VOCABULARY_TENSOR_VERSION!r} with a float32 item table")
    vocabulary_tensor = version == VOCABULARY_TENSOR_VERSION
    for key in ("model", "config", "checksum") + (() if vocabulary_tensor else ("items",)):
        if not isinstance(metadata.get(key), str):
            raise ModelFileError(f'{source}: metadata "{key}" is missing or not a string')
    start = 8 + length
    params = []
    for name, entry in header.items():
        dtype = "U8" if vocabulary_tensor and name == "items" else "F32"
        if not isinstance(entry, dict) or entry.get("dtype") != dtype:
            raise ModelFileError(f'{source}: tensor "{name}" is not {dtype}')
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise ModelFileError(f'{source}: tensor "{name}" has a bad shape or data_offsets')
        begin, end = offsets
        size = 1 if dtype == "U8" else 4
        for d in shape:
            size *= d
        if begin < 0 or end - begin != size or start + end > len(data):
            raise ModelFileError(f'{source}: tensor "{name}" {shape} does not fit its offsets')
        params.append((begin, name, shape, data[start + begin:start + end], dtype))
    params.sort()
    covered = 0
    for begin, name, _, raw, _ in params:
        if begin != covered:
            raise ModelFileError(f'{source}: tensor "{name}" overlaps another or leaves a gap')
        covered += len(raw)
    if covered != len(data) - start:
        raise ModelFileError(f"{source}: {len(data) - start - covered} bytes belong to no tensor")
    if _checksum(metadata, [(n, s, r, d) for _, n, s, r, d in params]) != metadata["checksum"]:
        raise ModelFileError(f"{source}: the checksum does not match (edited or corrupted)")
    tensors = [(name, shape, raw) for _, name, shape, raw, dtype in params if dtype == "F32"]
    if vocabulary_tensor:
        stored = [raw for _, name, _, raw, dtype in params if dtype == "U8"]
        if not stored:
            raise ModelFileError(f'{source}: format version 3 needs the tensor "items"')
        items = json.loads(gzip.decompress(stored[0]).decode("utf-8"))
    else:
        items = json.loads(metadata["items"])
    return {
        "model": metadata["model"],
        "config": json.loads(metadata["config"]),
        "items": items,
        "info": json.loads(metadata.get("info", "{}")),
        "params": tensors,
    }


def _f32_bytes(value):
    """float32 little-endian bytes and the shape of a torch tensor (its own elements only,
    in row-major order)."""
    import torch  # noqa: PLC0415 - the package needs torch only where tensors are involved

    t = value.detach().to("cpu", torch.float32).contiguous()
    # Through numpy, not untyped_storage(), which torch 1.13 (Debian's, CI's fallback) lacks.
    return t.numpy().astype("<f4", copy=False).tobytes(), list(t.shape)


def tensor(raw, shape):
    """A float32 torch tensor of `shape` from little-endian bytes (a copy)."""
    import torch  # noqa: PLC0415

    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).clone()
