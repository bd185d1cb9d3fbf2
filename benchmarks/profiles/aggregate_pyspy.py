import collections
import re
import sys

path, anchor = sys.argv[1], sys.argv[2]
leaf = collections.Counter()
cat = collections.Counter()
total = 0
for line in open(path):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    frames = stack.split(";")
    idx = [i for i, f in enumerate(frames) if anchor in f]
    if not idx:
        continue
    frames = frames[idx[0] + 1 :]
    total += n
    f = frames[-1] if frames else "(anchor itself)"
    leaf[re.sub(r":\d+\)$", ")", f)] += n
    files = " ".join(frames)
    if (
        "pjit" in files
        or "pxla" in files
        or "block_until_ready" in files
        or "_pythonify" in files
        or "convert_to_numpy" in frames[-1]
    ):
        c = "jax dispatch/execute/wait"
    elif "jaxlayer" in files:
        c = "jaxlayer"
    elif "data_adapter" in files or "epoch_iterator" in files:
        c = "keras data adapter"
    elif "callbacks" in files:
        c = "keras callbacks"
    elif "keras" in files:
        c = "keras other"
    else:
        c = "other"
    cat[c] += n
print("total samples in", anchor, total)
for c, n in cat.most_common():
    print(f"  {c:30s} {100 * n / total:5.1f}%")
print("top leaf frames:")
for f, n in leaf.most_common(12):
    print(f"  {100 * n / total:5.1f}%  {f}")
