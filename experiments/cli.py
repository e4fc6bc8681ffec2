"""Shared command-line handling: load a config file, apply --set overrides, report errors
without a traceback."""

from __future__ import annotations

import importlib.util
import pathlib
import sys


def load_config(path: str, overrides: list[str]):
    from gumbel_jax.training.config import apply_overrides

    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"gumbel_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    config = apply_overrides(module.get_config(), overrides)
    data = getattr(config, "data", None)
    if data is not None and getattr(data, "data_dir", ""):
        # A prepared dataset's folder, e.g. --set data.data_dir=~/tfds, resolved like the
        # command-line paths (tfds does not expand "~").
        import dataclasses

        config = dataclasses.replace(
            config, data=dataclasses.replace(data, data_dir=user_path(data.data_dir)))
    return config


def user_path(text: str) -> str:
    """A path given on the command line, resolved once here: ``~`` expanded and made
    absolute (orbax refuses relative checkpoint paths; tfds does not expand ``~``). URLs such
    as ``gs://bucket/run`` pass through unchanged, once a client for them is found. Use as an
    argparse ``type``."""
    if not text:
        return text
    if "://" in text:
        import argparse

        from gumbel_jax.training.run_folder import run_path

        try:
            run_path(text)  # a gs:// URL without gcsfs is refused here, in one line
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text
    return str(pathlib.Path(text).expanduser().absolute())


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def add_parallel_arguments(parser) -> None:
    """--mesh and the multi-host flags shared by train and reproduce."""
    parser.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                        help="device mesh sizes over all processes, e.g. 8,1,1 or -1,1,1 "
                             "(default: one device)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first. TPU VMs, "
                             "SLURM and Open MPI find their coordinator themselves; other "
                             "GPU clusters give the three flags below")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="address of process 0 (multi-node GPU without SLURM/MPI)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)


def start_parallel(args):
    """Initialise multi-host JAX if asked; the mesh of ``--mesh`` (or None: one device).
    Several processes without ``--mesh`` get data parallelism over every device (each
    training alone on its own share of the batches would be a different run)."""
    import jax

    if args.distributed:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    if not args.mesh:
        if jax.process_count() == 1:
            return None
        from gumbel_jax.sharding import make_mesh

        return make_mesh(data=-1)
    from gumbel_jax.sharding import make_mesh

    try:
        data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    except ValueError:
        raise ValueError(f"--mesh {args.mesh!r}: expected three integers DATA,FSDP,TENSOR"
                         ) from None
    return make_mesh(data=data, fsdp=fsdp, tensor=tensor)
