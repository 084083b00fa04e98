"""What the library's parity tests ask of the twin (`tests/torch_twin_test.ts`), as JSON in
on stdin and JSON out on stdout:

    python -m sigmarec_torch.parity scores FILE   # {"inputs": [[ids]]} -> {"scores": [[...]]}
    python -m sigmarec_torch.parity loss FILE     # {"inputs", "targets"} -> {"loss": x}
    python -m sigmarec_torch.parity train FILE    # {"model", "config", "steps", "seed"}:
                                                  # trains a twin on random sequences
    python -m sigmarec_torch.parity read FILE     # {} -> {"items", "sequences"} of lines
    python -m sigmarec_torch.parity items FILE    # {} -> {"items"}: a model file's vocabulary

Inputs are left-padded item ids (0 = padding), targets 0 where a position has none. The
loss is SASRec's with dropout off (eval mode), or SIGMA's training loss with the draws given
in `noise` ({"z", "gumbel", "x"}, as nested lists) and `step`/`epoch`, then also `parts`.
"""

import json
import math
import sys

import torch

from . import MODELS, load
from .data import read_lines
from .model_file import encode


def scores(path, request):
    model, _, _ = load(path)
    with torch.no_grad():
        s = model.scores(torch.tensor(request["inputs"], dtype=torch.long))
    return {"scores": s.tolist()}


def loss(path, request):
    model, _, _ = load(path)
    ids = torch.tensor(request["inputs"], dtype=torch.long)
    targets = torch.tensor(request["targets"], dtype=torch.long)
    with torch.no_grad():
        if model.name == "sasrec":
            return {"loss": model.loss(ids, targets).item()}
        if model.config["dropout"] != 0 or model.config["attentionDropout"] != 0:
            raise SystemExit("SIGMA's loss parity needs dropout 0: its masks cannot be passed in")
        model.train()  # the training loss, with the draws passed in
        noise = {k: torch.tensor(v, dtype=torch.float32) for k, v in request["noise"].items()}
        parts = {}
        value = model.loss(ids, targets, step=request.get("step", math.inf),
                           epoch=request.get("epoch", math.inf), parts=parts, noise=noise)
    return {"loss": value.item(), "parts": {k: v.item() for k, v in parts.items()}}


def train(path, request):
    config = request["config"]
    kind = request.get("model", "sasrec")
    model = MODELS[kind](config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(request.get("seed", 1))
    n, length = config["numItems"], config.get("maxLength", 100)
    model.train()
    for _ in range(request["steps"]):
        ids = torch.randint(1, n + 1, (8, length + 1), generator=g)
        ids[:4, : length // 2] = 0  # some left padding
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        targets[inputs == 0] = 0
        optimizer.zero_grad()
        model.loss(inputs, targets, g).backward()
        optimizer.step()
    items = ["<pad>", *[f"item{i}" for i in range(1, n + 1)]]
    with open(path, "wb") as f:
        f.write(encode(kind, model.config, items, model.named_tensors(),
                       {"trainer": "sigmarec_torch.parity"}))
    return {"wrote": path}


def items(path, _request):
    return {"items": load(path)[1]}


def read(path, _request):
    items, sequences = read_lines(path)
    return {"items": items, "sequences": sequences}


def main():
    command, path = sys.argv[1], sys.argv[2]
    handlers = {"scores": scores, "loss": loss, "train": train, "read": read, "items": items}
    if command not in handlers:
        raise SystemExit(f"unknown command {command!r}: {', '.join(handlers)}")
    print(json.dumps(handlers[command](path, json.load(sys.stdin))))


if __name__ == "__main__":
    main()
