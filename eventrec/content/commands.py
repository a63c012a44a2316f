"""``eventrec content embed | quantize``: the content step's commands (added to ``eventrec`` by cli.py).

    eventrec content embed --table LOGS/item_text.parquet --key movie_id --text text --out LOGS/item_text_minilm.parquet
    eventrec content quantize --schema ml100k --data LOGS --vectors LOGS/item_text_minilm.parquet --key movie_id \\
        --name text --attach events.parquet --attach impressions.parquet

Bad input exits with status 2 and a message naming the file, the column or the option.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Item content: text → vectors (a packaged sentence encoder) → residual-VQ codes (docs/content.md).")


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def embed(
    table: Path = typer.Option(..., help="Parquet/CSV content table: one row per key, with the text to encode."),
    key: str = typer.Option(..., help="The key column (e.g. movie_id)."),
    text: str = typer.Option("text", help="The text column."),
    out: Path = typer.Option(..., help="Parquet to write: the key and `vector` (list[float32], 384 for MiniLM), sorted by key (atomic)."),
    batch_size: int = typer.Option(64, min=1, help="Texts per encoder forward pass."),
    threads: int = typer.Option(1, min=1, help="torch intra-op threads."),
) -> None:
    """Encode a content table's text with all-MiniLM-L6-v2 (needs the optional extra `text`: make text)."""
    import torch
    from tqdm import tqdm

    from eventrec.content.text_encoder import EncoderUnavailable, MiniLMEncoder, embed_table
    from eventrec.store.raw_logs import DataError

    torch.set_num_threads(threads)
    try:
        encoder = MiniLMEncoder()
    except EncoderUnavailable as error:
        _fail(error)
    try:
        with tqdm(desc="encoding", unit=" texts", file=sys.stderr, dynamic_ncols=True) as bar:
            summary = embed_table(table, key, text, out, encoder, batch_size, progress=bar.update)
    except (DataError, ValueError) as error:
        _fail(error)
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def quantize(
    schema: str = typer.Option(..., help="The schema the store is built with (a YAML file or a built-in name): its splits give train_end."),
    data: Path = typer.Option(..., help="Directory of the raw logs (the schema's paths are relative to it)."),
    vectors: Path = typer.Option(..., help="Parquet of key + vector (e.g. from `eventrec content embed`)."),
    key: str = typer.Option(..., help="The impressions' item attribute the vectors are keyed by (e.g. movie_id)."),
    name: str = typer.Option(..., help="Prefix of the code attributes: NAME_vq0, NAME_vq1, ..."),
    levels: int = typer.Option(3, min=1, help="Residual levels (codes per item)."),
    codes: int = typer.Option(256, min=2, help="Codewords per level."),
    seed: int = typer.Option(0, help="k-means seed (level l uses seed + l)."),
    vector_column: str = typer.Option("vector", help="The vector column of --vectors."),
    attach: Optional[list[str]] = typer.Option(None, help="FILE[:COLUMN] of --data to copy with the codes joined on COLUMN "
                                               "(default: --key), written as STEM_NAME_vq.parquet (repeatable)."),
    out_dir: Optional[Path] = typer.Option(None, help="Where to write the codes, codebooks, report and attached files (default: --data)."),
) -> None:
    """Fit residual-VQ codebooks on the training period's items, encode every item, attach the codes."""
    from eventrec.content.quantize import quantize_table
    from eventrec.schema import SchemaError, builtin_schema_path, load_schema
    from eventrec.store.raw_logs import DataError

    try:
        path = Path(schema) if schema.endswith((".yaml", ".yml")) or Path(schema).exists() else builtin_schema_path(schema)
        report = quantize_table(load_schema(path), data, vectors, key, name, levels, codes, seed, vector_column,
                                list(attach or []), out_dir)
    except (SchemaError, DataError, ValueError, FileNotFoundError) as error:
        _fail(error)
    typer.echo(json.dumps(report, indent=1, sort_keys=True))
