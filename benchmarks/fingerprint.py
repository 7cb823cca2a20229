"""A behaviour fingerprint of the trainer: a fixed-seed, deterministic 20-step tiny run, hashed.

    .venv/bin/python benchmarks/fingerprint.py --out /tmp/fp            # prints one JSON line

It drives only the command line (`python -m dualtoken_lite.train`), so the same script measures the code before
and after a refactoring: equal hashes of the final weights and equal evaluation figures mean no behaviour changed.
It also resumes the run from its step-10 checkpoint into a second folder and checks that the resumed weights
equal the uninterrupted run's (`resume_equal`). Pass `--resume-from OLD_RUN` to resume a run folder written by an
older version of the code instead (its config.json and checkpoints as they were written then).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.numpy import load_file

ARGS = ["--preset", "tiny", "--max-steps", "20", "--deterministic", "true", "--threads", "1", "--seed", "0",
        "--save-every", "10", "--keep-checkpoints", "5", "--eval-every", "0", "--eval-samples", "256",
        "--image-every", "0", "--log-every", "10"]


def weights_hash(path: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def train(extra: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "dualtoken_lite.train", *ARGS, *extra], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/fingerprint")
    parser.add_argument("--resume-from", default=None, help="an older run folder to copy and resume from step 10")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    full = out / "full"
    train(["--out", str(full)])
    source = Path(args.resume_from) if args.resume_from else full
    resumed = out / "resumed"
    shutil.copytree(source, resumed)
    shutil.rmtree(resumed / "model")
    for ckpt in (resumed / "checkpoints").glob("step_*"):
        if ckpt.name != "step_00000010":
            shutil.rmtree(ckpt)
    (resumed / "checkpoints" / "latest").write_text("step_00000010\n")
    train(["--out", str(resumed), "--resume", str(resumed)])
    summary = json.loads((full / "summary.json").read_text())["eval"]
    result = {
        "weights_sha256": weights_hash(full / "model" / "model.safetensors"),
        "resumed_sha256": weights_hash(resumed / "model" / "model.safetensors"),
        "eval": {k: summary[k] for k in ("psnr", "ssim", "semantic_accuracy", "teacher_accuracy")},
        "codebook": summary["codebook"],
    }
    result["resume_equal"] = result["weights_sha256"] == result["resumed_sha256"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
