#!/usr/bin/env python3
"""Picks a corpus small enough to commit from a libFuzzer merge control file.

    minimise.py CONTROL OUT_DIR [--max-files N] [--max-bytes B]

CONTROL is the `-merge_control_file` of a `-set_cover_merge=1` run (which lists every feature of
every input). Greedy set cover under a budget: repeatedly takes the input adding the most
features not yet covered per byte (plus a fixed cost per file), until the budget is spent or
nothing adds coverage; OUT_DIR is emptied and gets copies of the chosen inputs. Prints how much
of the coverage the chosen inputs keep. Used by scripts/fuzz.sh (FUZZ_UPDATE_CORPUS=1).
"""
import argparse
import heapq
import os
import shutil

PER_FILE = 4096  # bytes a file costs beyond its size: with the file cap binding, prefer bigger inputs


def read_control(path):
    with open(path) as f:
        lines = f.read().splitlines()
    count = int(lines[0])
    files = lines[2:2 + count]
    features = {}
    for line in lines[2 + count:]:
        parts = line.split()
        if parts and parts[0] == "FT":
            features[int(parts[1])] = frozenset(int(x) for x in parts[2:])
    return files, features


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("control")
    parser.add_argument("out")
    parser.add_argument("--max-files", type=int, default=400)
    parser.add_argument("--max-bytes", type=int, default=1_000_000)
    args = parser.parse_args()

    files, features = read_control(args.control)
    sizes = {i: os.path.getsize(files[i]) for i in features}
    everything = set().union(*features.values()) if features else set()
    covered = set()
    chosen = []
    used = 0

    def score(i, gain):
        return -gain / (sizes[i] + PER_FILE)

    # Lazy greedy: a gain only shrinks as coverage grows, so a stale top entry is re-scored.
    heap = [(score(i, len(f)), i) for i, f in features.items() if f]
    heapq.heapify(heap)
    while heap and len(chosen) < args.max_files:
        _, i = heapq.heappop(heap)
        gain = len(features[i] - covered)
        if gain == 0:
            continue
        if heap and score(i, gain) > heap[0][0]:
            heapq.heappush(heap, (score(i, gain), i))
            continue
        if used + sizes[i] > args.max_bytes:
            continue
        chosen.append(i)
        covered |= features[i]
        used += sizes[i]

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    for i in chosen:
        shutil.copy(files[i], os.path.join(args.out, os.path.basename(files[i])))
    share = 100 * len(covered) / len(everything) if everything else 100
    print(f"minimise.py: {len(chosen)} of {len(features)} inputs, {used} bytes, "
          f"{len(covered)} of {len(everything)} features ({share:.1f} %)")


main()
