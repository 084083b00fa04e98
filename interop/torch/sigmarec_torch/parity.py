"""What the library's parity tests ask of the twin (`tests/torch_twin_test.ts`), as JSON in
on stdin and JSON out on stdout:

    python -m sigmarec_torch.parity scores FILE   # {"inputs": [[ids]]} -> {"scores": [[...]]}
    python -m sigmarec_torch.parity loss FILE     # {"inputs", "targets"} -> {"loss": x}
    python -m sigmarec_torch.parity train FILE    # {"config", "steps", "seed"}: trains the
                                                  # twin on random sequences, writes FILE

Inputs are left-padded item ids (0 = padding), targets 0 where a position has none. The
loss is computed with dropout off (the model in eval mode).
"""

import json
import sys

import torch

from . import load
from .model_file import encode
from .sasrec import SasRec


def scores(path, request):
    model, _, _ = load(path)
    with torch.no_grad():
        s = model.scores(torch.tensor(request["inputs"], dtype=torch.long))
    return {"scores": s.tolist()}


def loss(path, request):
    model, _, _ = load(path)
    with torch.no_grad():
        value = model.loss(torch.tensor(request["inputs"], dtype=torch.long),
                           torch.tensor(request["targets"], dtype=torch.long))
    return {"loss": value.item()}


def train(path, request):
    config = request["config"]
    model = SasRec(config)
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
        f.write(encode("sasrec", model.config, items, model.named_tensors(),
                       {"trainer": "sigmarec_torch.parity"}))
    return {"wrote": path}


def main():
    command, path = sys.argv[1], sys.argv[2]
    handlers = {"scores": scores, "loss": loss, "train": train}
    if command not in handlers:
        raise SystemExit(f"unknown command {command!r}: {', '.join(handlers)}")
    print(json.dumps(handlers[command](path, json.load(sys.stdin))))


if __name__ == "__main__":
    main()
