"""What class balancing (`balance_iters`, `balance_min_ratio`) does to a labelling of U, off
line, with no model: the check behind docs/method.md's "Every labelling of U" section.

Two kinds of labeller are scored, argmax as is against the balanced rules coft implements
(`pseudo_labels::balanced_labels`: Sinkhorn rounds, then a proposal replaces the argmax only
where the labeller gave it at least `ratio` times its top probability):
- a *biased* labeller on a balanced or long-tailed pool: the zero-shot CSVs `coft zero-shot`
  writes (`path,pred,<class probabilities>`, the true class as the path's first folder);
- an *accurate* labeller on a truly long-tailed pool: Caltech101's train split (the CoOp
  split in ../shared/data, 400 to 16 images per class), cosine similarities drawn per image
  (true class N(mu, 0.025), others N(0.22, 0.025)) under CLIP's logit scale 100.

For each it prints the share of U labelled right and S* (top-16 per class) size @ precision.
Pure Python, no packages:
  python3 tools/balance_sim.py --caltech ../shared/data/caltech-101.tar.gz [zs.csv ...]
"""
import argparse, csv, json, math, random, tarfile


def load_csv(path):
    rows = list(csv.reader(open(path)))
    classes = rows[0][2:]
    probs = [[float(x) for x in r[2:]] for r in rows[1:]]
    truth = [classes.index(r[0].split("/")[0]) for r in rows[1:]]
    return probs, truth


def caltech_counts(tar_path):
    with tarfile.open(tar_path) as t:
        split = json.load(t.extractfile("caltech-101/split_zhou_Caltech101.json"))
    counts = {}
    for _, label, _ in split["train"]:
        counts[label] = counts.get(label, 0) + 1
    return [counts[c] for c in sorted(counts)]


def simulate(counts, mu, seed=1):
    rng = random.Random(seed)
    probs, truth = [], []
    for c, n in enumerate(counts):
        for _ in range(n):
            s = [rng.gauss(0.22, 0.025) for _ in counts]
            s[c] = rng.gauss(mu, 0.025)
            m = max(s)
            e = [math.exp(100 * (x - m)) for x in s]
            z = sum(e)
            probs.append([x / z for x in e])
            truth.append(c)
    return probs, truth


def sinkhorn(probs, iters):
    c, n = len(probs[0]), len(probs)
    q = [r[:] for r in probs]
    for _ in range(iters):
        col = [sum(r[j] for r in q) for j in range(c)]
        k = [n / (c * s) if s > 0 else 1.0 for s in col]
        for r in q:
            for j in range(c):
                r[j] *= k[j]
            z = sum(r)
            for j in range(c):
                r[j] /= z
    return q


def argmax(r):
    return max(range(len(r)), key=lambda j: r[j])


def labels(probs, iters, ratio):
    if iters == 0:
        return [(argmax(r), max(r)) for r in probs]
    q = sinkhorn(probs, iters)
    out = []
    for p, b in zip(probs, q):
        a, prop = argmax(p), argmax(b)
        lab = prop if p[prop] >= ratio * p[a] else a
        out.append((lab, b[lab]))
    return out


def score(lab, truth, c, k=16):
    right = sum(l == t for (l, _), t in zip(lab, truth))
    by = [[] for _ in range(c)]
    for i, (l, conf) in enumerate(lab):
        by[l].append((conf, -i, i))
    sel = [i for cl in by for _, _, i in sorted(cl, reverse=True)[:k]]
    prec = sum(lab[i][0] == truth[i] for i in sel) / max(1, len(sel))
    return f"U {100 * right / len(truth):.1f}%, S* {len(sel)} @ {100 * prec:.1f}%"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csvs", nargs="*", help="zero-shot CSVs from `coft zero-shot`")
    ap.add_argument("--caltech", help="caltech-101.tar.gz (the CoOp split's class counts)")
    ap.add_argument("--mu", type=float, nargs="*", default=[0.29, 0.31, 0.33])
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    tasks = [(p, load_csv(p)) for p in a.csvs]
    if a.caltech:
        counts = caltech_counts(a.caltech)
        tasks += [(f"caltech101 train counts, accurate labeller mu={mu}", simulate(counts, mu)) for mu in a.mu]
    for name, (probs, truth) in tasks:
        c = len(probs[0])
        print(name)
        for title, iters, ratio in [("argmax", 0, 0), ("sinkhorn", a.iters, 0.0), ("near-ties 0.5", a.iters, 0.5)]:
            print(f"  {title:14} {score(labels(probs, iters, ratio), truth, c)}")


if __name__ == "__main__":
    main()
