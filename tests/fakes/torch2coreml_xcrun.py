#!/usr/bin/env python3
"""Test double of `xcrun coremlcompiler compile MODEL.mlpackage OUTDIR` as torch2coreml calls it: writes
OUTDIR/MODEL.mlmodelc with the metadata.json coremlcompiler writes (inputSchema, outputSchema,
mlProgramOperationTypeHistogram), from the description the torch2coreml double saved in the package.

FAKE_COREMLCOMPILER_FAIL=<text>: for a package whose name contains it, write a partial .mlmodelc (no
metadata.json, no coremldata.bin) and exit 1, as a compile that runs out of memory or disk does.
"""

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fakes.resources import write_model  # noqa: E402


def main(argv):
    if argv[:2] != ["coremlcompiler", "compile"] or len(argv) != 4:
        sys.stderr.write("xcrun: error: usage: xcrun coremlcompiler compile <model> <output directory>\n")
        return 64
    package, out_dir = Path(argv[2]), Path(argv[3])
    spec_path = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        sys.stderr.write(f"coremlcompiler: error: {package}: unable to read the model\n")
        return 1
    stem = package.name[: -len(".mlpackage")]
    fault = os.environ.get("FAKE_COREMLCOMPILER_FAIL")
    if fault and fault in stem:
        partial = out_dir / f"{stem}.mlmodelc"
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "model.mil").write_text("program(1.0)\n")
        sys.stderr.write(f"coremlcompiler: error: compiling {package} failed: out of memory\n")
        return 1
    target = out_dir / f"{stem}.mlmodelc"
    if target.exists():
        shutil.rmtree(target)
    write_model(out_dir, stem, spec["inputs"], spec["outputs"], attention=spec["attention"],
                uses_attention=spec["uses_attention"], description=f"compiled from {package.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
