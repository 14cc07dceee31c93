"""`run_benchmark.py samples`: look at what a generator makes, as a PNG grid of pairs."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .cell import cell_split, load_images
from .config import RunConfig
from .datasets import create_dataset
from .generation import make_pairs


def write_samples(cfg: RunConfig, generator: str, n: int = 6, out: str | None = None,
                  console: Console | None = None) -> Path:
    from generators import get_generator_class

    from .plots import pair_grid
    from .runner import resolve_components

    get_generator_class(generator)  # unknown name: one-line error before any work
    cfg.generators = [generator]
    components = resolve_components(cfg)  # every setting validated before any work
    dataset = cfg.datasets[0]
    adapter = create_dataset(dataset, cfg.root_of(dataset), **components[("dataset", dataset)])
    wanted = cfg.categories_for(dataset)
    category = wanted[0] if wanted != "all" else adapter.categories()[0]
    cell = cfg.cell(dataset, category, generator, cfg.detectors[0], cfg.seeds[0], components)
    cell.pairs_per_defect = n
    split = cell_split(cell, adapter.samples(category))
    normals = load_images(split.train_normals, cell.image_size)
    log = (lambda m: console.print(m)) if console else None
    pairs = make_pairs(cell, adapter, split, normals, cfg.cache_dir, log).pairs
    path = Path(out) if out else Path("results/samples") / f"{generator}_{dataset}_{category}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(pair_grid(pairs, path, title=f"{generator} on {dataset}/{category} (seed {cell.seed})"))
