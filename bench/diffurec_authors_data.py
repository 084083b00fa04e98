"""Writes sequence lines (``user item item ...``) as the pickle DiffuRec's code reads.

The authors' ``main.py --dataset NAME`` opens ``../datasets/data/NAME/dataset.pkl``: a dict
with ``train``, ``val`` and ``test`` (user -> list of item ids, ids from 1) and ``smap``
(item token -> id). Per user: train = all but the last two items, val and test one each, as
this library's leave-one-out split. Items are numbered by first appearance.

    python3 bench/diffurec_authors_data.py ../shared/data/Office_Products.txt \\
        DiffuRec/datasets/data/office/dataset.pkl

Used for the comparison in docs/diffusion-notes.md ("Training against the authors' code").
"""
import os
import pickle
import sys


def main(source, target):
    train, val, test, smap = {}, {}, {}, {}
    with open(source, encoding="utf-8") as f:
        for user, line in enumerate(f):
            tokens = line.split()[1:]
            if len(tokens) < 3:
                sys.exit(f"{source}:{user + 1}: {len(tokens)} items; leave-one-out needs 3")
            items = [smap.setdefault(t, len(smap) + 1) for t in tokens]
            train[user], val[user], test[user] = items[:-2], [items[-2]], [items[-1]]
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target, "wb") as f:
        pickle.dump({"train": train, "val": val, "test": test, "smap": smap}, f)
    examples = sum(max(0, len(s) - 1) for s in train.values())
    print(f"{target}: {len(train)} users, {len(smap)} items, {examples} training examples")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: diffurec_authors_data.py SEQUENCE_LINES OUT/dataset.pkl")
    main(sys.argv[1], sys.argv[2])
