"""The embedding check (``data inspect --embedding-check``) against pHash, on real photos.

    python benchmarks/embedding_twins.py [--photos DIR] [--out JSON]

Planted twins: 40 photos of ``realphotos-dev/classes`` (seeded) are cropped (a random
window of a fraction of each side) and recoloured (each channel scaled by a random factor
in 1 +- c), at three strengths. Recall: how many of the 40 (copy, original) pairs pHash
(distance <= 6, mirror included) and the embedding cosine (EfficientNet-Lite0 at 96 px)
find. False pairs: pairs of *different* photos of the folder (all 37,128 pairs of 273
photos) at or above each cosine, and copies matched to a photo that is not their
original. The folder's README says near-duplicates were removed by eye; pairs this finds
among its photos are listed by name to be looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

from imageclf.data import duplicates as dup
from imageclf.data import embedding_twins as et
from imageclf.imaging import resize_for_model

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "realphotos-dev" / "classes"
STRENGTHS = {"crop 80-90%, colour +-10%": (0.8, 0.9, 0.1),
             "crop 70-80%, colour +-20%": (0.7, 0.8, 0.2),
             "crop 60-70%, colour +-30%": (0.6, 0.7, 0.3)}  # fmt: skip
COSINES = (0.8, 0.85, 0.9)
PLANTED = 40


def plant(image: Image.Image, rng: np.random.Generator, lo: float, hi: float, colour: float):
    w, h = image.size
    f = rng.uniform(lo, hi)
    cw, ch = int(w * f), int(h * f)
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    pixels = np.asarray(image.crop((x0, y0, x0 + cw, y0 + ch))).astype(np.float32)
    pixels *= rng.uniform(1 - colour, 1 + colour, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def unit(images: list[Image.Image]) -> torch.Tensor:
    pixels = np.stack([resize_for_model(im, et.SIDE) for im in images])
    return torch.nn.functional.normalize(et.embed(pixels), dim=1)


def hash_distance(copies: list[Image.Image], originals: np.ndarray) -> np.ndarray:
    plain, mirrored = dup.perceptual_hashes(
        np.stack([resize_for_model(im, dup.HASH_SIDE) for im in copies])
    )
    return np.minimum(np.bitwise_count(plain ^ originals), np.bitwise_count(mirrored ^ originals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--out", default="benchmarks/results/embedding_twins.json")
    args = parser.parse_args()
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    photos = [Image.open(f).convert("RGB") for f in files]
    load = loadavg()
    start = time.perf_counter()
    originals = unit(photos)
    seconds = time.perf_counter() - start
    hashes = dup.perceptual_hashes(np.stack([resize_for_model(im, 32) for im in photos]))[0]
    sims = originals @ originals.T
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    distinct = {c: int((sims[upper] >= c).sum()) for c in COSINES}
    i, j = torch.nonzero((sims >= min(COSINES)) & upper, as_tuple=True)
    flagged = sorted(
        ((float(sims[a, b]), files[a].name, files[b].name,
          int(np.bitwise_count(hashes[a] ^ hashes[b]))) for a, b in zip(i, j, strict=True)),
        reverse=True,
    )  # fmt: skip
    rows = []
    for name, (lo, hi, colour) in STRENGTHS.items():
        rng = np.random.default_rng(0)
        picked = rng.choice(len(photos), PLANTED, replace=False)
        copies = [plant(photos[k], rng, lo, hi, colour) for k in picked]
        found_hash = hash_distance(copies, hashes[picked]) <= dup.THRESHOLD
        sims_copy = unit(copies) @ originals.T
        own = sims_copy[torch.arange(PLANTED), torch.from_numpy(picked)]
        sims_copy[torch.arange(PLANTED), torch.from_numpy(picked)] = -1
        row = {"planted": name, "pairs": PLANTED, "phash_found": int(found_hash.sum()),
               "cosine_median": round(float(own.median()), 3)}  # fmt: skip
        for c in COSINES:
            hit = (own >= c).numpy()
            row[f"found_at_{c}"] = int(hit.sum())
            row[f"missed_by_phash_found_at_{c}"] = int((hit & ~found_hash).sum())
            row[f"wrong_matches_at_{c}"] = int((sims_copy >= c).sum())
        rows.append(row)
    print(f"{len(photos)} photos embedded at {et.SIDE} px in {seconds:.1f} s (load {load})")
    heads = " ".join(f"{'cos>=' + str(c):>9}" for c in COSINES)
    print(f"{'planted (40 pairs)':<28} {'pHash':>6} {heads}   wrong matches")
    for r in rows:
        print(f"{r['planted']:<28} {r['phash_found']:>6} "
              + " ".join(f"{r[f'found_at_{c}']:>9}" for c in COSINES)
              + "   " + "/".join(str(r[f"wrong_matches_at_{c}"]) for c in COSINES))  # fmt: skip
    print("pairs of different photos in the folder at or above: "
          + ", ".join(f"{c}: {n}" for c, n in distinct.items()))  # fmt: skip
    for sim, a, b, d in flagged:
        print(f"  {sim:.3f}  {a} ~ {b}  (pHash distance {d})")
    result = {"machine": describe(), "photos": len(photos), "side": et.SIDE,
              "backbone": et.BACKBONE, "embed_seconds": round(seconds, 2), "loadavg_before": load,
              "planted": rows,
              "distinct_pairs_at_or_above": distinct,
              "flagged_pairs": [{"cosine": round(s, 3), "a": a, "b": b, "phash_distance": d}
                                for s, a, b, d in flagged]}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
