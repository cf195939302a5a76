"""Benchmark rows: from the public Hub dataset a task names (`datasets.load_dataset`), or from local files in the
same schema (parquet, JSON lines or CSV; an `image` column may hold paths relative to the file)."""

from pathlib import Path

from datasets import Dataset, Image, load_dataset


BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def read_local(data_files: str | list[str]) -> Dataset:
    """Rows of local files; image paths in an `image` column are resolved against the file's folder."""
    files = [Path(path) for path in ([data_files] if isinstance(data_files, (str, Path)) else data_files)]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise ValueError(f"data file not found: {', '.join(missing)}; pass existing files to --data.")
    builders = {BUILDERS.get(path.suffix) for path in files}
    if None in builders or len(builders) > 1:
        raise ValueError(f"--data takes files of one kind among {', '.join(BUILDERS)}; got {[str(p) for p in files]}.")
    rows = load_dataset(builders.pop(), data_files=[str(path) for path in files], split="train")
    if "image" in rows.column_names and getattr(rows.features["image"], "dtype", None) == "string":
        root = files[0].parent
        rows = rows.map(lambda path: {"image": None if path is None else str(root / path)}, input_columns="image")
        rows = rows.cast_column("image", Image())
    return rows


def read_rows(dataset: tuple[str, str | None, str], data_files=None) -> Dataset:
    """The rows of `dataset` (`(Hub path, config, split)`), or of `data_files` when given."""
    if data_files is not None:
        return read_local(data_files)
    path, config, split = dataset
    return load_dataset(path, config, split=split)
