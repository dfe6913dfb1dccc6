"""The ``posenfs`` command line: each command parses, loads a spec, makes one library call and
prints one summary. Errors a user can cause (``PosenfsError``) print one line and exit 2; a
traceback only with ``--debug``.

Heavy imports (torch, ray, mlflow) happen inside commands, so ``posenfs --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys

import click

from nfs_orchestrator.errors import PosenfsError

DEFAULT_ROOT = "./posenfs-runs"


class PosenfsGroup(click.Group):
    """Turns PosenfsError into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PosenfsError as e:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"posenfs: error: {e}", err=True)
            sys.exit(2)


def root_option(f):
    return click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("POSENFS_ROOT", DEFAULT_ROOT),
        show_default="./posenfs-runs or $POSENFS_ROOT",
        help="Folder holding Ray storage, the MLflow store and the campaign ledgers.",
    )(f)


@click.group(cls=PosenfsGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug: bool) -> None:
    """posenfs: Pose Neural Fabrics Search campaigns on Ray, tracked in MLflow."""


# ------------------------------------------------------------------------------------------
# search spaces and genotypes
# ------------------------------------------------------------------------------------------


@main.group()
def space() -> None:
    """Inspect fabric search spaces."""


@space.command("summary")
@click.argument("fabric")
@click.option("--grouping", required=True, help="Grouping file or name (e.g. mpii-p5).")
@click.option("--backbone", default="tiny", show_default=True)
@click.option("--input", "input_size", default="256x256", show_default=True, help="WxH")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def space_summary(fabric: str, grouping: str, backbone: str, input_size: str, as_json: bool):
    """Params, arch params and MACs of the supernet as it runs (torch.utils.flop_counter)."""
    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.nn.counting import supernet_summary
    from nfs_orchestrator.specs import load_fabric

    w, h = parse_size(input_size)
    summary = supernet_summary(load_fabric(fabric), load_grouping(grouping), backbone, (w, h))
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo(f"fabric {fabric}, grouping {grouping}, backbone {backbone}, input {w}x{h}")
    click.echo(f"  params       {summary['params']:>14,}")
    click.echo(f"  arch params  {summary['arch_params']:>14,}")
    click.echo(f"  MACs         {summary['macs']:>14,}  ({summary['macs'] / 1e9:.2f} G)")


@main.group()
def genotype() -> None:
    """Read or render a derived genotype."""


@genotype.command("show")
@click.argument("source")
def genotype_show(source: str) -> None:
    """Print a genotype file as a table."""
    from nfs_orchestrator.genotype import format_genotype, read_genotype

    click.echo(format_genotype(read_genotype(source)))


@genotype.command("draw")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def genotype_draw(source: str, output: str) -> None:
    """Draw the derived fabrics (one panel per part) to an .svg or .png file."""
    from nfs_orchestrator.drawing import draw_genotype
    from nfs_orchestrator.genotype import read_genotype

    path = draw_genotype(read_genotype(source), output)
    click.echo(f"wrote {path}")


def parse_size(text: str) -> tuple[int, int]:
    """'256x192' → (256, 192) as (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected WxH, e.g. 256x192") from None
    return w, h


if __name__ == "__main__":  # pragma: no cover
    main()
