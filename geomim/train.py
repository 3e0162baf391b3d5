"""GeoMIM pretraining from a config file.

    python -m geomim.train --config swin_base data.root=/data/nuscenes run_dir=runs/swin_base
    torchrun --nproc_per_node=8 -m geomim.train --config swin_base data.root=/data/nuscenes
    python -m geomim.train --config runs/swin_base/config.yaml --resume auto

--config takes a YAML file or the name of a shipped config (swin_base, swin_large, cva_vit_base,
tiny_synthetic); `key=value` overrides (dotted keys, YAML values) are applied on top. The config
is validated before anything runs; the resolved config is saved as RUN_DIR/config.yaml.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from geomim.training.config import ConfigError, dump_config, load_config, shipped_configs
from geomim.training.distributed import init_distributed, shutdown_distributed, world_size_from_env
from geomim.training.engine import train
from geomim.training.startup import check_startup, resolve_resume


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, Any]:
    """The command line; see the module docstring."""
    names = ", ".join(p.stem for p in shipped_configs())
    parser = argparse.ArgumentParser(
        prog="python -m geomim.train",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML file or shipped config ({names})")
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="auto: continue from the run's latest checkpoint (a fresh start if none); "
        "PATH: from that checkpoint folder",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser, parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the config, then train (every rank runs this)."""
    parser, args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return
        resume = resolve_resume(args.resume, config.run_dir)
        check_startup(config, world_size_from_env(), resume)
    except ConfigError as error:
        parser.error(str(error))
    context = init_distributed(config.train.device, need_group=config.train.fsdp)
    try:
        train(config, context, resume)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
