"""PyTorch twins of this library's models: the same architectures, config fields, parameter
names and model file, so that a model trains in PyTorch (one process or torchrun) and serves
with the library, or the other way round. See interop/torch/README.md."""

from .model_file import ModelFileError, decode, encode
from .sasrec import SasRec

__all__ = ["ModelFileError", "SasRec", "decode", "encode", "load"]


def load(path):
    """A twin built from a model file: (model in eval mode, item tokens, info)."""
    from .model_file import tensor

    with open(path, "rb") as f:
        contents = decode(f.read(), path)
    if contents["model"] != "sasrec":
        raise ValueError(f"{path}: model {contents['model']!r} has no PyTorch twin yet (sasrec)")
    model = SasRec(contents["config"])
    state = {name: tensor(raw, shape) for name, shape, raw in contents["params"]}
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ValueError(f"{path}: parameters do not match the config: {sorted(missing)[:5]}")
    model.load_state_dict(state)
    return model.eval(), contents["items"], contents["info"]
