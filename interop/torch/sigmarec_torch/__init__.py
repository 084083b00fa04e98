"""PyTorch twins of this library's models: the same architectures, config fields, parameter
names and model file, so that a model trains in PyTorch (one process or torchrun) and serves
with the library, or the other way round. See interop/torch/README.md."""

from .model_file import ModelFileError, decode, encode
from .sasrec import SasRec
from .sigma import Sigma

__all__ = ["MODELS", "ModelFileError", "SasRec", "Sigma", "decode", "encode", "load"]

#: The twins by the library's `--model` name.
MODELS = {"sasrec": SasRec, "sigma": Sigma}


def load(path):
    """A twin built from a model file: (model in eval mode, item tokens, info)."""
    from .model_file import tensor

    with open(path, "rb") as f:
        contents = decode(f.read(), path)
    if contents["model"] not in MODELS:
        raise ValueError(
            f"{path}: model {contents['model']!r} has no PyTorch twin yet ({', '.join(MODELS)})")
    model = MODELS[contents["model"]](contents["config"])
    state = {name: tensor(raw, shape) for name, shape, raw in contents["params"]}
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ValueError(f"{path}: parameters do not match the config: {sorted(missing)[:5]}")
    model.load_state_dict(state)
    return model.eval(), contents["items"], contents["info"]
