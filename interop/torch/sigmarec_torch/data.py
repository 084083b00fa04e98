"""Data as the library reads it: sequence lines, leave-one-out, padded batches.

- `read_lines`: one user per line, `user item item ...` in time order, whitespace separated;
  users and items get dense ids in order of first appearance (items from 1; 0 is padding),
  as `lib/data/readers.ts` numbers them. A user on two lines is refused, naming both lines.
- `leave_one_out`: users with at least 3 items; train `s[:-2]`, validation target `s[-2]`
  after `s[:-2]`, test target `s[-1]` after `s[:-1]` (`lib/data/split.ts`).
- `train_batches`: whole training sequences, shuffled, inputs `s[:-1]` and targets `s[1:]`
  over the most recent `max_length` positions, left padded to the batch's longest row.
"""

import random
import re

import torch

PAD_TOKEN = "<pad>"
MIN_HISTORY = 3


# JavaScript's \s, which the library splits fields on (Python's str.split() also splits on
# \x1c-\x1f and \x85, and not on \ufeff).
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_FIELDS = re.compile(f"[{_JS_SPACE}]+")


def read_lines(path):
    """(item tokens with "<pad>" first, sequences as lists of item ids), as
    `readSequenceLines` in `lib/data/readers.ts` reads them: lines end at \n or \r\n,
    fields split on JavaScript's whitespace, a user with no item is skipped."""
    items = {}
    users = {}
    sequences = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    for number, line in enumerate(text.split("\n"), 1):
        tokens = [t for t in _FIELDS.split(line.removesuffix("\r")) if t]
        if not tokens:
            continue
        user, rest = tokens[0], tokens[1:]
        if user in users:
            raise ValueError(
                f"{path}:{number}: user {user!r} already has a history on line {users[user]}")
        users[user] = number
        if rest:
            sequences.append([items.setdefault(t, len(items) + 1) for t in rest])
    if not items:
        raise ValueError(f"{path}: no items")
    return [PAD_TOKEN, *items], sequences


def leave_one_out(sequences):
    """(train sequences, validation examples, test examples); an example is (history, target)."""
    train, valid, test = [], [], []
    for s in sequences:
        if len(s) < MIN_HISTORY:
            continue
        if len(s) - 2 >= 2:
            train.append(s[:-2])
        valid.append((s[:-2], s[-2]))
        test.append((s[:-1], s[-1]))
    return train, valid, test


def train_batches(train, batch_size, max_length, rng: random.Random):
    """One epoch of (inputs, targets) int64 tensors `[B, L]`, in a shuffled order."""
    rows = [s for s in train if len(s) >= 2]
    rng.shuffle(rows)
    out = []
    for start in range(0, len(rows), batch_size):
        group = rows[start:start + batch_size]
        length = max(min(len(s) - 1, max_length) for s in group)
        inputs = torch.zeros(len(group), length, dtype=torch.long)
        targets = torch.zeros(len(group), length, dtype=torch.long)
        for r, s in enumerate(group):
            kept = min(len(s) - 1, max_length)
            inputs[r, length - kept:] = torch.tensor(s[len(s) - 1 - kept:len(s) - 1])
            targets[r, length - kept:] = torch.tensor(s[len(s) - kept:])
        out.append((inputs, targets))
    return out


def history_batch(histories, max_length):
    """Left-padded ids `[B, L]` of the most recent `max_length` items of each history."""
    length = max(1, min(max_length, max(len(h) for h in histories)))
    ids = torch.zeros(len(histories), length, dtype=torch.long)
    for r, h in enumerate(histories):
        kept = h[-length:]
        if kept:
            ids[r, length - len(kept):] = torch.tensor(kept)
    return ids


@torch.no_grad()
def evaluate(model, examples, num_items, ks=(10, 20, 40), batch_size=256):
    """Recall and NDCG at `ks` and MRR, ranking the full catalogue with the history and
    padding excluded and ties counted against the target (the library's protocol)."""
    model.eval()
    sums = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg") for k in ks}
    sums["mrr"] = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        ids = history_batch([h for h, _ in chunk], model.config["maxLength"]).to(device)
        scores = model.scores(ids).float()  # [B, N + 1]
        allowed = torch.ones_like(scores, dtype=torch.bool)
        allowed[:, 0] = False
        for r, (history, target) in enumerate(chunk):
            allowed[r, [i for i in history if i != target]] = False
        target = torch.tensor([t for _, t in chunk], device=device)
        t_score = scores.gather(1, target.unsqueeze(1))  # [B, 1]
        others = allowed.clone()
        others[torch.arange(len(chunk)), target] = False
        rank = ((scores >= t_score) & others).sum(1)  # pessimistic: ties count against
        for k in ks:
            hit = rank < k
            sums[f"recall@{k}"] += hit.sum().item()
            sums[f"ndcg@{k}"] += (hit / torch.log2(rank.float() + 2)).sum().item()
        sums["mrr"] += (1 / (rank.float() + 1)).sum().item()
    return {k: v / len(examples) for k, v in sums.items()}
