"""Train the PyTorch twin, on one process or data-parallel under torchrun, and write the
library's model file, which `deno task recommend`, `serve` and the browser load as they load
one the library trained.

    python -m sigmarec_torch.train --data Beauty.txt --out runs/beauty-sasrec
    torchrun --nproc_per_node 2 -m sigmarec_torch.train --data Beauty.txt --out runs/ddp

The protocol is the library's: leave-one-out, Adam (lr 1e-3), every epoch validated by
full-catalogue Recall@20 with the history excluded, early stopping after `--patience`
epochs without a better one, the best epoch's weights kept, then tested. Under torchrun each
process takes every WORLD_SIZE-th batch of one shared shuffle (the last steps repeat a few
first batches when the count does not divide) and DistributedDataParallel averages the
gradients (gloo on CPU, NCCL on GPUs), so an epoch covers the same batches as on one
process; rank 0 validates, decides when to stop and writes the file.
"""

import argparse
import datetime
import json
import os
import random
import sys
import time

import torch
import torch.distributed as dist

from . import MODELS
from . import data as D
from .model_file import encode


def _flag(key):
    return "--" + "".join("-" + ch.lower() if ch.isupper() else ch for ch in key)


def _bool(text):
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def parse_args(argv):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model", choices=sorted(MODELS), default="sasrec")
    model = first.parse_known_args(argv)[0].model
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="sasrec", help="which twin")
    p.add_argument("--data", required=True, help="sequence lines: user item item ...")
    p.add_argument("--out", required=True, help="folder for model.safetensors and metrics.json")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="sequences per step per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (tests)")
    p.add_argument("--check-replicas", action="store_true",
                   help="after each step, check that every rank holds the same weights")
    # The model's config fields, as the library's CLI names them (--max-length, --interests).
    for key, value in MODELS[model].DEFAULTS.items():
        if key != "seed":
            kind = _bool if isinstance(value, bool) else type(value)
            p.add_argument(_flag(key), dest=key, type=kind, default=value)
    return p.parse_args(argv)


def fingerprint(model):
    """Float64 sum and sum of squares of every parameter: equal weights give equal values."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    return torch.stack([flat.sum(), (flat * flat).sum()])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cpu")
    if world > 1:
        cuda = torch.cuda.is_available()
        # Rank 0 validates alone while the others wait in a broadcast: allow it hours.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=6))
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    say = print if rank == 0 else (lambda *a, **k: None)

    items, sequences = D.read_lines(args.data)
    train, valid, test = D.leave_one_out(sequences)
    twin = MODELS[args.model]
    config = {k: getattr(args, k) for k in twin.DEFAULTS if k != "seed"}
    config.update(seed=args.seed, numItems=len(items) - 1)
    model = twin(config).to(device)  # the same seed on every rank: the same start
    # Then a stream of its own per rank, so that dropout and sampled noise differ between
    # ranks as they would between the batches of one process.
    torch.manual_seed(args.seed * 1000 + rank)
    # SIGMA leaves parameters out of some steps (the GRU before --hard-interests-from, the
    # interest decoder with --mie-recon mean): DDP must then look for unused ones.
    net = torch.nn.parallel.DistributedDataParallel(
        model, find_unused_parameters=args.model == "sigma") if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    say(f"data: {args.data}: {len(sequences)} users, {len(items) - 1} items; "
        f"{world} process(es), {device}")

    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed + rank)
    best = {"epoch": 0, "score": -1.0, "valid": {}, "state": None}
    step, since_best, started = 0, 0, time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        batches = D.train_batches(train, args.batch_size, config["maxLength"], rng)
        # Every rank needs as many steps: the last ones repeat the epoch's first batches
        # (as torch's DistributedSampler pads), so no batch is dropped.
        padded = -(-len(batches) // world) * world
        batches = (batches * world)[:padded][rank::world]
        losses = []
        for inputs, targets in batches:
            optimizer.zero_grad()
            # Through the wrapper: DDP's gradient averaging hooks on its forward call.
            loss = net(inputs.to(device), targets.to(device), generator, step, epoch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if args.check_replicas and world > 1:
                mine = fingerprint(model)
                every = [torch.zeros_like(mine) for _ in range(world)]
                dist.all_gather(every, mine)
                same = all(torch.equal(every[0], f) for f in every)
                say(f"step {step}: replicas {'identical' if same else 'DIFFER'}")
                if not same:
                    raise SystemExit(f"step {step}: the ranks' weights differ")
            if args.max_steps and step >= args.max_steps:
                break
        stop = torch.zeros(1, device=device)
        if rank == 0:
            metrics = D.evaluate(model, valid, len(items) - 1)
            score = metrics["recall@20"]
            if score > best["score"]:
                best = {"epoch": epoch, "score": score, "valid": metrics,
                        "state": {k: v.clone() for k, v in model.state_dict().items()}}
                since_best = 0
            else:
                since_best += 1
            say(f"epoch {epoch}/{args.epochs} loss {sum(losses) / max(1, len(losses)):.4f} "
                f"valid recall@20 {score:.4f} best {best['score']:.4f}@{best['epoch']} "
                f"elapsed {time.time() - started:.0f}s")
            if since_best >= args.patience or (args.max_steps and step >= args.max_steps):
                stop[0] = 1
        if world > 1:
            dist.broadcast(stop, 0)
        if stop.item():
            break

    if rank == 0:
        model.load_state_dict(best["state"])
        test_metrics = D.evaluate(model, test, len(items) - 1)
        os.makedirs(args.out, exist_ok=True)
        info = {"epoch": best["epoch"], "valid": best["valid"], "trainer": "sigmarec_torch",
                "processes": world}
        with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
            f.write(encode(args.model, model.config, items, model.named_tensors(), info))
        with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "data": args.data, "best_epoch": best["epoch"],
                       "processes": world, "valid": best["valid"], "test": test_metrics}, f,
                      indent=1)
        say(f"test {json.dumps(test_metrics)}")
        say(f"wrote {args.out}/model.safetensors, {args.out}/metrics.json")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
