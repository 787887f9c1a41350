"""Regenerate the Python code for `protos/` into `spindle/v1/`.

Run `python scripts/generate_protos.py` after editing a `.proto` file; the
test suite fails while the committed code is stale. `--stage-imports DIR`
instead puts the googleapis protos ours import into DIR, where `buf lint`
(see buf.yaml) finds them; scripts/test does that before linting.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def googleapis_root() -> Path:
    """Where googleapis-common-protos installed google/api and google/rpc
    (.proto sources included): imported from there, never copied here."""
    import google.api.field_behavior_pb2 as field_behavior

    return Path(field_behavior.__file__).resolve().parent.parent.parent


def generate(out_dir: Path) -> None:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every proto into out_dir."""
    well_known = resources.files("grpc_tools") / "_proto"
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--proto_path={well_known}",
        f"--proto_path={googleapis_root()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


# The googleapis files our protos import.
IMPORTED = ("google/api/field_behavior.proto", "google/rpc/status.proto")


def stage_imports(dest: Path) -> None:
    """Copy the imported googleapis protos from the installed package to `dest`."""
    for name in IMPORTED:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((googleapis_root() / name).read_bytes())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stage-imports"]:
        stage_imports(Path(sys.argv[2]))
    else:
        generate(ROOT)
    sys.exit(0)
