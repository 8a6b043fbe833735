"""tlsearch split STUDY --out DIR: write the validation (and test) split a study makes, as files."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("split", help="write the validation split (and the test split) a study "
                                     "cuts from data.path, seeded as its runs cut them")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--out", required=True, help="the folder to write (class folders of links "
                                                "to the images, or .npz / .csv files)")
    p.add_argument("--copy", action="store_true",
                   help="copy image files instead of linking to them")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly
    from tlsearch.config import load_config
    from tlsearch.splits import check_out, write_splits

    out = Path(args.out)
    check_out(out, args.force)  # before the data is read
    cfg = load_config(args.study)
    import_tensorflow_quietly()  # images are resized with TensorFlow's op, as in training
    written, ds = write_splits(cfg, out, copy=args.copy, force=args.force)
    for w in written:
        print(f"{w.split:<11} {w.n:>6} examples  {w.path}")
    files = {"image_folder": " (image files as copies)" if args.copy else
             " (image files as links to the originals)"}.get(ds_format(cfg), "")
    print(f"wrote {out}{files}; the {len(ds.y_train)} training examples are not written; "
          f"split.json records how the data was cut")
    return 0


def ds_format(cfg) -> str:
    from tlsearch.data import infer_format

    return cfg.data.format or infer_format(cfg.resolve(cfg.data.path))
