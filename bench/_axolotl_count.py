"""Worker (Axolotl's venv, untimed): what `axolotl preprocess` wrote, counted as tuner counts it.

    python bench/_axolotl_count.py PREPARED_DIR --out counts.json

PREPARED_DIR is the `dataset_prepared_path` given to `axolotl preprocess`; it must hold one
prepared dataset (a hash-named folder with dataset_info.json). Counts: rows, tokens
(input_ids), trained tokens (labels that are not -100, after each row's first: the count
a causal LM loss is normalised by, as tuner.data.labels.trained_count defines it).
"""

from __future__ import annotations

import argparse
import json
import os


def find_prepared(root: str) -> str:
    found = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "dataset_info.json")))
    if len(found) != 1:
        raise SystemExit(f"expected one prepared dataset in {root}, found {found}")
    return os.path.join(root, found[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prepared")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import datasets
    import pyarrow.compute as pc

    folder = find_prepared(args.prepared)
    table = datasets.load_from_disk(folder).with_format("arrow")[:]
    labels = table.column("labels")
    firsts = pc.list_element(labels.filter(pc.greater(pc.list_value_length(labels), 0)), 0)
    trained = pc.sum(pc.not_equal(pc.list_flatten(labels), -100)).as_py() - pc.sum(pc.not_equal(firsts, -100)).as_py()
    out = {"rows": table.num_rows, "tokens": pc.sum(pc.list_value_length(table.column("input_ids"))).as_py(),
           "trained_tokens": int(trained), "columns": table.column_names, "folder": folder}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
